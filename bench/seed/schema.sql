-- The seed's shop: what the "seed's table" workload reads and writes
-- (bench/seed_lib.sh loads it through psql, as the superuser, into the
-- primary; :app is the application user, :products and :sales the sizes).
--   products    the catalogue the "product list" pages read
--   sales       the order lines the "dashboard" sums per region
--   cart_items  what the writes add; neither read reads it, so a write
--               does not end the cached answers of the reads (a write to
--               sales would end every dashboard entry at once)
SET client_min_messages = warning;
DROP TABLE IF EXISTS cart_items, sales, products;
CREATE TABLE products (id int PRIMARY KEY, category int NOT NULL, name text NOT NULL,
                       price numeric(10,2) NOT NULL, stock int NOT NULL);
INSERT INTO products
    SELECT g, 1 + g % 50, 'product ' || g, 1 + ((g::bigint * 7919) % 50000) / 100.0, (g * 13) % 200
    FROM generate_series(1, :products) g;
CREATE INDEX products_category_price ON products (category, price);
CREATE TABLE sales (id int PRIMARY KEY, product_id int NOT NULL, region int NOT NULL,
                    day int NOT NULL, amount numeric(10,2) NOT NULL);
INSERT INTO sales
    SELECT g, 1 + (g::bigint * 31) % :products, 1 + g % 8, 1 + (g::bigint * 7919) % 30,
           ((g * 31) % 10000) / 100.0
    FROM generate_series(1, :sales) g;
CREATE TABLE cart_items (id bigserial PRIMARY KEY, cart int NOT NULL, product_id int NOT NULL,
                         qty int NOT NULL);
ALTER TABLE products OWNER TO :app;
ALTER TABLE sales OWNER TO :app;
ALTER TABLE cart_items OWNER TO :app;
VACUUM ANALYZE products;
VACUUM ANALYZE sales;

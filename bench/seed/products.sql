\set category random(1, 50)
\set page random(0, 4)
SELECT id, name, price, stock FROM products WHERE category = :category ORDER BY price, id LIMIT 20 OFFSET :page * 20;

\set cart random(1, 100000)
\set product random(1, :products)
INSERT INTO cart_items (cart, product_id, qty) VALUES (:cart, :product, 1);

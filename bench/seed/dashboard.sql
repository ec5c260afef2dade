\set day random(1, 30)
SELECT region, count(*) AS orders, sum(amount) AS revenue FROM sales WHERE day >= :day GROUP BY region ORDER BY region;

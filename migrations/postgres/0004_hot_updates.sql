-- Room on each page for HOT updates. Every counted call rewrites its token's row and its
-- statistics row; on full pages (the default fillfactor 100) each rewrite is a new tuple plus an
-- entry in every index of the table (five on tokens). With free space on the page PostgreSQL
-- updates in place (heap-only tuples) and leaves the indexes alone, since no indexed column
-- changes. Applies to pages written from now on; `VACUUM FULL tokens` repacks an existing store.
-- PostgreSQL only: SQLite has no equivalent.
ALTER TABLE tokens SET (fillfactor = 80);
ALTER TABLE token_stats_daily SET (fillfactor = 80);
ALTER TABLE accounts SET (fillfactor = 80);

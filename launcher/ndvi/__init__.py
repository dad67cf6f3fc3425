"""The planetary NDVI job: search, items, plan, requests, submit, store, watch, status, local runs, map."""

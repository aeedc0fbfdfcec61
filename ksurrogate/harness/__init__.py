"""The harness around the library: what turns an experiment's protocol into a finished run.

  runs    -- run directories: phases keyed by the config fields they read, resumable chunked
             outcomes, checks and repair of stored results, the lock, timings
  driver  -- the shared attribution driver: fits every surrogate family, scores it with intervals,
             writes the summary
  report  -- figures (matplotlib's object-oriented API: no global backend is set) and tables
  store   -- atomic writes of JSON and arrays, one-line storage errors

The library (`ksurrogate`) never imports the harness; import what you use:
`from ksurrogate.harness import runs`. Importing this package imports none of its modules.
"""

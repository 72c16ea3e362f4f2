-- GET the URL given on the command line; only the JSON summary is added.
dofile(os.getenv("BENCH_WRK_DIR") .. "/summary.lua")
done = bench_summary

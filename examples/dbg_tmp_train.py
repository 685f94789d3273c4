import logging, sys, runpy
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.argv[0] = "/work/wt-inplace/examples/train_ddp_elastic.py"
runpy.run_path(sys.argv[0], run_name="__main__")

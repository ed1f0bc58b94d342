"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/generate.py --config FILE`"""

from _entry import run

if __name__ == "__main__":
    run("generate")

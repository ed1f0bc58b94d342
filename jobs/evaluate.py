"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py --config FILE`"""

from _entry import run

if __name__ == "__main__":
    run("evaluate")

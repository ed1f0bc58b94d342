"""`ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --config FILE`"""

from _entry import run

if __name__ == "__main__":
    run("train")

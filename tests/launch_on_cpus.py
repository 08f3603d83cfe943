"""python tests/launch_on_cpus.py N SCRIPT ARGS...: runs an entry script with the machine's
CPU split into N logical devices, so that --strategy mirrored has N replicas without a GPU.
Logical devices must be configured before TensorFlow initialises, hence a process of its own."""
import os
import runpy
import sys

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    num_devices, script = int(sys.argv[1]), sys.argv[2]
    if num_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    sys.argv = [script] + sys.argv[3:]
    sys.path.insert(0, ROOT)
    runpy.run_path(os.path.join(ROOT, script), run_name="__main__")

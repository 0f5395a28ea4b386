"""The parts of ``benchmarks/speed.py``, one measurement per module.

- :mod:`.flops`: FLOPs per network from its ONNX graph and per pixel of the whole pipeline.
- :mod:`.peak`: the machine's peak float32 matmul FLOP/s.
- :mod:`.data`: synthetic cubes in memory and on disk.
- :mod:`.pipeline`: the models timed and the pipeline / each network timed per backend.
- :mod:`.workers`: each measurement in a fresh process (``speed.py --worker``).
- :mod:`.cpp`: the C++ runtime's ``unmix_run_raw`` and the ``unmix-run`` command, with peak RSS.
- :mod:`.steps`: the run's steps in order (models, peak, pipeline, networks, K, cube sizes, VCA + FCLS).
- :mod:`.report`: the machine, the targets and the tables of speed.json / speed.md / README.
"""

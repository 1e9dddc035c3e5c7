"""Running a model: one ``Session`` interface over torch, onnxruntime, LiteRT, tflite-runtime
and TFLite Micro (:mod:`.sessions`), device placements (:mod:`.placements`), CPU instruction-set
classes for int8 kernels (:mod:`.isa`) and crash isolation for untrusted TFLite files
(:mod:`.isolation`)."""

"""Graph clean-up on exported ONNX models: fold BatchNorm, drop Dropout/Identity, name the batch.

These run after every export so that both the ONNX file we ship and the TFLite writer see the
inference graph only: no training-time ops, no per-channel affine that could be folded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecnn.converters.reshape_chains import compose_reshape_chains

PASS_THROUGH_OPS = {"Identity", "Dropout"}


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def remove_pass_through(model: onnx.ModelProto) -> int:
    """Drop Identity and inference-mode Dropout nodes, rewiring their consumers."""
    graph_outputs = {o.name for o in model.graph.output}
    removed = 0
    for node in list(model.graph.node):
        if node.op_type not in PASS_THROUGH_OPS:
            continue
        src, dst = node.input[0], node.output[0]
        if dst in graph_outputs:
            producer = next((n for n in model.graph.node if src in n.output), None)
            if producer is None:
                continue
            producer.output[list(producer.output).index(src)] = dst
            _rename_input(model, src, dst)
        else:
            _rename_input(model, dst, src)
        model.graph.node.remove(node)
        removed += 1
    return removed


def fold_batch_norm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into the Conv before it when that Conv feeds nothing else."""
    inits = initializers(model)
    users = consumers(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    folded = 0
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or len(users.get(conv.output[0], [])) != 1
                or conv.input[1] not in inits or not all(i in inits for i in bn.input[1:5])):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64)
                                  for i in bn.input[1:5])
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0]))
        factor = gamma / np.sqrt(var + eps)
        new_w = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name, b_name = conv.input[1] + "_bnfold", conv.output[0] + "_bnfold_bias"
        model.graph.initializer.extend([numpy_helper.from_array(new_w, w_name),
                                        numpy_helper.from_array(new_b, b_name)])
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        model.graph.node.remove(bn)
        folded += 1
    prune_initializers(model)
    return folded


def prune_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    for index in reversed(range(len(model.graph.initializer))):  # in place: weights can be GBs
        if model.graph.initializer[index].name not in used:
            del model.graph.initializer[index]


def name_batch_dimension(model: onnx.ModelProto, name: str = "batch") -> None:
    """Give the symbolic leading dimension of every graph input and output one readable name."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = name
    del model.graph.value_info[:]


def _reduce_axes(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:  # opset 18: axes as an input
        init = initializers(model).get(node.input[1])
        return None if init is None else [int(a) for a in numpy_helper.to_array(init).ravel()]
    return next((list(a.ints) for a in node.attribute if a.name == "axes"), None)


def spatial_mean_to_global_pool(model: onnx.ModelProto) -> int:
    """ReduceMean over H and W of an NCHW map -> GlobalAveragePool (+ Flatten for keepdims=0).

    The same arithmetic, but the op onnxruntime's quantiser knows: the dynamo exporter writes
    AdaptiveAvgPool2d(1) as ReduceMean, which the quantiser leaves float, so without this every
    ResNet/MobileNet/EfficientNet export would stop int8 at its classifier.
    """
    if not any(n.op_type == "ReduceMean" for n in model.graph.node):
        return 0
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]
             if v.type.tensor_type.HasField("shape")}
    if not model.graph.value_info:  # shapes of the ReduceMean inputs are needed
        inferred = onnx.shape_inference.infer_shapes(model)
        ranks.update({v.name: len(v.type.tensor_type.shape.dim)
                      for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape")})
    rewritten = 0
    for node in list(model.graph.node):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        axes = _reduce_axes(model, node)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        position = list(model.graph.node).index(node)
        pooled = node.output[0] if keep else node.output[0] + "/pooled"
        replacement = [onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled],
                                             name=node.name)]
        if not keep:
            replacement.append(onnx.helper.make_node("Flatten", [pooled], [node.output[0]],
                                                     name=node.name + "/flatten", axis=1))
        for new in replacement:  # the exporter's record of the module it came from stays
            new.metadata_props.extend(node.metadata_props)
        model.graph.node.remove(node)
        for offset, new in enumerate(replacement):
            model.graph.node.insert(position + offset, new)
        rewritten += 1
    if rewritten:
        prune_initializers(model)
    return rewritten


def group_norm_to_instance_norm(model: onnx.ModelProto) -> int:
    """GroupNormalization (opset 18/21; torch's dynamo exporter writes it from opset 21) ->
    Reshape to (N, G, -1), InstanceNormalization with unit scale, Reshape back, Mul, Add: the
    form PyTorch exports at lower opsets, the same arithmetic. onnx's shape inference gives the
    function op's output no shape, so every later size would be unknown; this form has them."""
    nodes = [n for n in model.graph.node if n.op_type == "GroupNormalization"]
    inits = initializers(model)
    if not nodes or not all(n.input[1] in inits and n.input[2] in inits for n in nodes):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in [*inferred.graph.input, *inferred.graph.value_info]
             if v.type.tensor_type.HasField("shape")}
    rewritten = 0
    for node in nodes:
        shape = ranks.get(node.input[0])
        if not shape or len(shape) < 3 or not shape[1]:
            continue
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(_group_norm_nodes(model, node, inits, len(shape),
                                                       shape[1])):
            new.metadata_props.extend(node.metadata_props)
            model.graph.node.insert(position + offset, new)
        rewritten += 1
    if rewritten:
        prune_initializers(model)
    return rewritten


def _group_norm_nodes(model: onnx.ModelProto, node: onnx.NodeProto,
                      inits: dict[str, onnx.TensorProto], rank: int,
                      channels: int) -> list[onnx.NodeProto]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    groups, eps = int(attrs["num_groups"]), float(attrs.get("epsilon", 1e-5))
    name, x, y = node.name or node.output[0], node.input[0], node.output[0]

    def per_channel(tensor: str) -> np.ndarray:  # opset 18 gives them per group
        values = numpy_helper.to_array(inits[tensor]).astype(np.float32).ravel()
        if values.size != channels:
            values = np.repeat(values, channels // values.size)
        return values.reshape(channels, *[1] * (rank - 2))

    constants: dict[str, np.ndarray] = {
        f"{name}/groups_shape": np.array([0, groups, -1], np.int64),
        f"{name}/unit_scale": np.ones(groups, np.float32),
        f"{name}/zero_bias": np.zeros(groups, np.float32),
        f"{name}/scale": per_channel(node.input[1]),
        f"{name}/bias": per_channel(node.input[2])}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    make = onnx.helper.make_node
    return [make("Shape", [x], [f"{name}/shape"], name=f"{name}/shape"),
            make("Reshape", [x, f"{name}/groups_shape"], [f"{name}/grouped"],
                 name=f"{name}/grouped"),
            make("InstanceNormalization", [f"{name}/grouped", f"{name}/unit_scale",
                                           f"{name}/zero_bias"], [f"{name}/normalised"],
                 name=f"{name}/normalised", epsilon=eps),
            make("Reshape", [f"{name}/normalised", f"{name}/shape"], [f"{name}/ungrouped"],
                 name=f"{name}/ungrouped"),
            make("Mul", [f"{name}/ungrouped", f"{name}/scale"], [f"{name}/scaled"],
                 name=f"{name}/scaled"),
            make("Add", [f"{name}/scaled", f"{name}/bias"], [y], name=name)]


def stack_sum_to_add(model: onnx.ModelProto) -> int:
    """ReduceSum over axis 0 of a Concat (axis 0) of tensors each Unsqueezed at axis 0 ->
    a chain of Add: ``torch.stack(xs).sum(dim=0)``, as segmentation-models-pytorch's FPN merges
    its pyramid, exported as Unsqueeze, Concat, ReduceSum(keepdims=0). The same sum, without the
    5-D stack whose first axis TFLite would take for the batch (the reduction was refused as
    one over the batch axis). Returns how many sums were rewritten."""
    if not any(n.op_type == "ReduceSum" for n in model.graph.node):
        return 0
    producers = {out: n for n in model.graph.node for out in n.output}
    users = consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    rewritten = 0
    for node in list(model.graph.node):
        if node.op_type != "ReduceSum" or _reduce_axes(model, node) != [0]:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        concat = producers.get(node.input[0])
        if attrs.get("keepdims", 1) != 0 or concat is None or concat.op_type != "Concat":
            continue
        if onnx.helper.get_attribute_value(concat.attribute[0]) != 0 or len(
                users.get(concat.output[0], [])) != 1 or concat.output[0] in graph_outputs:
            continue
        stacked = [producers.get(name) for name in concat.input]
        if len(stacked) < 2 or not all(u is not None and u.op_type == "Unsqueeze"
                                       and _unsqueeze_axes(model, u) == [0]
                                       and len(users.get(u.output[0], [])) == 1
                                       for u in stacked):
            continue
        terms = [u.input[0] for u in stacked if u is not None]
        name = node.name or node.output[0]
        nodes = list(model.graph.node)
        after = nodes[nodes.index(node) + 1] if nodes[-1] is not node else None
        adds, total = [], terms[0]
        for i, term in enumerate(terms[1:], start=1):
            out = node.output[0] if i == len(terms) - 1 else f"{name}/sum{i}"
            adds.append(onnx.helper.make_node("Add", [total, term], [out], name=f"{name}/add{i}"))
            total = out
        for new in adds:  # the exporter's record of the module it came from stays
            new.metadata_props.extend(node.metadata_props)
        for old in [node, concat, *stacked]:
            model.graph.node.remove(old)
        # where the ReduceSum was: after every term, before every user of the sum
        position = list(model.graph.node).index(after) if after is not None else len(
            model.graph.node)
        for offset, new in enumerate(adds):
            model.graph.node.insert(position + offset, new)
        rewritten += 1
    if rewritten:
        prune_initializers(model)
    return rewritten


def _unsqueeze_axes(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    return _reduce_axes(model, node)  # axes as an input (opset 13+) or an attribute


def flatten_output_concat(model: onnx.ModelProto) -> int:
    """A Concat that writes a graph output and reads another Concat on the same axis (used by
    nothing else) takes that Concat's inputs itself: YOLOv8-pose's head, exported through
    torch.export, is cat([cat([boxes, scores]), keypoints]); the simplified ONNX Ultralytics
    writes has the one Concat. The same tensor, but int8 quantisation then sees the boxes and
    the scores as inputs of the output Concat, whose ranges decide whether it stays float
    (converters/quantize.py), instead of one int8 scale of 1.9 that reads every score as 0.
    Returns how many inner Concats were merged."""
    outputs = {o.name for o in model.graph.output}
    merged = 0
    changed = True
    while changed:
        changed = False
        producers = {out: n for n in model.graph.node for out in n.output}
        users = consumers(model)
        for node in model.graph.node:
            if node.op_type != "Concat" or node.output[0] not in outputs:
                continue
            axis = onnx.helper.get_attribute_value(node.attribute[0])
            for position, name in enumerate(node.input):
                inner = producers.get(name)
                if (inner is None or inner.op_type != "Concat" or name in outputs
                        or len(users.get(name, [])) != 1
                        or onnx.helper.get_attribute_value(inner.attribute[0]) != axis):
                    continue
                inputs = list(node.input)
                inputs[position:position + 1] = list(inner.input)
                del node.input[:]
                node.input.extend(inputs)
                model.graph.node.remove(inner)
                merged += 1
                changed = True
                break
            if changed:
                break
    return merged


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that an initializer gives a value: before IR version 4 the spec had
    every initializer listed among the inputs (Caffe2-era and older exporters write them so),
    and such an input is a constant, not something the caller feeds. The IR version moves to 4,
    where an initializer need not be an input. Returns how many were dropped."""
    weights = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in weights]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped


def clean(model: onnx.ModelProto) -> dict[str, int]:
    """Run every pass; return how much each changed."""
    return {"batchnorm_folded": fold_batch_norm(model),
            "pass_through_removed": remove_pass_through(model),
            "group_norm_unfolded": group_norm_to_instance_norm(model),
            "stack_sum_added": stack_sum_to_add(model),
            "output_concat_flattened": flatten_output_concat(model),
            "spatial_mean_pooled": spatial_mean_to_global_pool(model),
            "reshape_chains_composed": compose_reshape_chains(model)}


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    weights = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in weights)


def declared_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the image input declares (a batch-1 export), None when it is symbolic."""
    dims = image_input(model).type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") else None


def fix_input_shape(model: onnx.ModelProto, shape: tuple[int, ...] | None, source: str) -> bool:
    """``--input-shape``: give the image input fixed dims (onnx2tf's ``-ois``); True if changed.

    Without a shape, symbolic C/H/W are refused with the flag to pass: TFLite tensors and every
    size computed from them (pads, reshapes, resize targets) need numbers.
    """
    from edgecnn.errors import ConversionError

    value = image_input(model)
    dims = value.type.tensor_type.shape.dim
    current = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    if shape is None:
        if any(not isinstance(d, int) for d in current[1:]):
            raise ConversionError(f"{source}: input {value.name!r} has shape {current}; pass "
                                  "`input_shape` N,C,H,W (e.g. 1,3,224,224) to fix its symbolic "
                                  "dims", parameters=("input_shape",))
        return False
    if len(shape) != len(current):
        raise ConversionError(f"{source}: `input_shape` has {len(shape)} dims but input "
                              f"{value.name!r} has {len(current)} ({current})",
                              parameters=("input_shape",))
    for axis, (have, want) in enumerate(zip(current, shape, strict=True)):
        if isinstance(have, int) and have != want and not (axis == 0 and have == 0):
            raise ConversionError(f"{source}: input_shape={','.join(map(str, shape))} "
                                  f"conflicts with input {value.name!r} {current} (axis {axis} "
                                  f"is fixed at {have})", parameters=("input_shape",))
    for dim, want in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = want
    del model.graph.value_info[:]  # inferred from the old, symbolic shape
    for output in model.graph.output:  # re-inferred by the simplifier
        for dim in output.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    return True


SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "Expand", "Cast", "Identity", "Where",
             "Equal"}


def computes_shapes(model: onnx.ModelProto) -> bool:
    """The graph does shape arithmetic at run time (TorchScript and other exporters)."""
    return any(n.op_type in SHAPE_OPS for n in model.graph.node)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and shape-subgraph elimination by onnxslim.

    Third-party exports compute pads, reshape targets and resize sizes from ``Shape`` at run
    time; with the input shape fixed they are constants. onnxslim folds them (and Identity,
    Cast and Pad-into-Conv on the way); onnxscript's optimizer, measured on the same
    TorchScript-exported files, left the ConstantOfShape/Slice/Transpose chain of F.pad behind
    (docs/coverage.md). The model card and other metadata are kept.
    """
    import onnxslim

    from edgecnn.quiet import quiet

    metadata = [(p.key, p.value) for p in model.metadata_props]
    with quiet("onnxslim", stdout=True):
        slimmed = onnxslim.slim(model)
    if not isinstance(slimmed, onnx.ModelProto):
        return model
    del slimmed.metadata_props[:]
    for key, value in metadata:
        slimmed.metadata_props.add(key=key, value=value)
    return slimmed

"""The ``edgecnn`` command: parse, build a config, call :mod:`edgecnn.api`, print.

Errors become exit codes in one place (:func:`main`): 0 ok, 1 a parity check failed,
2 bad usage or input, each reported as one line on stderr (``--traceback`` for the stack).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from edgecnn import __version__
from edgecnn.errors import BadInputError, EdgecnnError, ExitStatus
from edgecnn.targets import target_names

PathArg = click.Path(path_type=Path)


class ModelPath(click.ParamType):
    """A model file, or the short name of a shipped model (``lenet5``): see edgecnn.files.shipped."""

    name = "model"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path:
        from edgecnn.files.shipped import resolve_model
        return resolve_model(value)


ModelArg = ModelPath()


# The flag that sets an API parameter, where it is not the name with dashes (errors.py:
# library messages name API parameters, and this respells them)
FLAG_OF = {"max_drop_pp": "--max-drop", "min_agreement_pct": "--min-agreement",
           "max_int8_steps": "--max-steps", "int8_for": "--for", "budget_data": "--data",
           "methods": "--budget-methods", "keep": "--budget-keep",
           "learning_rate": "--lr",
           "placements": "--placement"}


# the one --runtime grammar (edgecnn.runtimes.sessions.RUNTIME_GRAMMAR; not imported here:
# the CLI starts without numpy)
RUNTIME_HELP = "comma-separated names or globs, e.g. onnxruntime,litert or 'torch-cuda:*:graph'"


def flag_of(parameter: str) -> str:
    return FLAG_OF.get(parameter, "--" + parameter.replace("_", "-"))


class EdgecnnGroup(click.Group):
    """Maps library errors to one stderr line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():  # filters and display set below end with the command
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except (EdgecnnError, ValueError) as exc:  # ValueError: config dataclass validation
            if ctx.meta.get("edgecnn.traceback"):
                raise
            message = exc.respelled(flag_of) if isinstance(exc, EdgecnnError) else str(exc)
            click.echo(f"edgecnn: error: {message}", err=True)
            ctx.exit(int(getattr(exc, "exit_status", ExitStatus.BAD_INPUT)))
        except KeyboardInterrupt:
            click.echo("edgecnn: interrupted", err=True)
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except BrokenPipeError:  # `edgecnn ... | head -1`: the reader has gone, nothing to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stop further writes failing
            ctx.exit(int(ExitStatus.OK))
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # the safety net: a library failed in a way not yet named
            if ctx.meta.get("edgecnn.traceback"):
                raise
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            click.echo(f"edgecnn: error: {detail} ({type(exc).__name__}; re-run with "
                       "--traceback for where, and please report it)", err=True)
            ctx.exit(int(ExitStatus.BAD_INPUT))


@click.group(cls=EdgecnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecnn")
@click.option("--traceback", is_flag=True, help="Show the full Python traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, traceback: bool) -> None:
    """Quantise, convert, validate and benchmark small CNNs for edge devices."""
    ctx.meta["edgecnn.traceback"] = traceback
    if not traceback:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        from edgecnn.quiet import mute_onnxruntime_log

        mute_onnxruntime_log()


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    click.echo(f"edgecnn: warning: {message}", err=True)


def emit_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    from edgecnn.report import text_table
    click.echo(text_table(rows, columns))


def require_matplotlib(plot_path: Path | None) -> None:
    """Refuse --plot up front, before any work, when the [plot] extra is missing."""
    if plot_path and importlib.util.find_spec("matplotlib") is None:
        raise BadInputError("--plot needs matplotlib: pip install 'edgecnn[plot]' (or "
                            "pip install matplotlib), or drop --plot")


def check_outputs(*paths: Path | None, inputs: tuple[Path | None, ...] = ()) -> None:
    """Refuse unwritable report paths, and any that is one of ``inputs`` or another output,
    before any work starts."""
    from edgecnn.files.outputs import check_output_path
    given = [p for p in paths if p]
    for i, path in enumerate(given):
        check_output_path(path, [*inputs, *given[:i]])
    if len({p.resolve() for p in given}) != len(given):
        raise BadInputError("two report options name the same file; give each its own path")


# -- zoo / train / inspect ------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def zoo(as_json: bool) -> None:
    """List the model zoo: name, input shape, parameter count, and the trained models that ship
    (name one in place of a path: `edgecnn inspect lenet5`)."""
    from edgecnn import zoo as model_zoo
    from edgecnn.files.card import read_sidecar
    from edgecnn.files.shipped import shipped_models

    trained: dict[str, list[str]] = {}
    for short_name, path in shipped_models().items():
        card = read_sidecar(path)
        if card is not None:
            accuracy = f" ({100 * card.test_accuracy:.2f} %)" if card.test_accuracy else ""
            trained.setdefault(card.architecture, []).append(short_name + accuracy)
    rows = [{"name": n, "input": "x".join(map(str, a.input_shape)), "classes": a.num_classes,
             "parameters": a.parameter_count(), "dataset": a.dataset,
             "shipped": ", ".join(trained.get(n, [])), "summary": a.summary}
            for n, a in model_zoo.ARCHITECTURES.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        emit_table(rows)


@cli.command()
@click.argument("arch")
@click.option("--data", type=PathArg, required=True,
              help="MNIST folder with train-* and t10k-* IDX files (or --download).")
@click.option("--download", is_flag=True, help="Fetch MNIST into --data first if missing.")
@click.option("--epochs", default=12, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("-o", "--output", type=PathArg, required=True, help="Model file to write (.pt).")
def train(arch: str, data: Path, download: bool, epochs: int, seed: int, batch_size: int,
          lr: float, output: Path) -> None:
    """Train a zoo architecture on MNIST and save it with its model card."""
    from edgecnn import zoo as model_zoo
    from edgecnn.files.data import download_mnist, load_dataset
    from edgecnn.train import TrainConfig, save_model
    from edgecnn.train import train as train_model

    if arch not in model_zoo.ARCHITECTURES:
        raise BadInputError(f"unknown architecture {arch!r}; see `edgecnn zoo`")
    config = TrainConfig(epochs, batch_size, lr, seed=seed)  # checked before any work
    check_outputs(output, inputs=(data,))
    if download:
        download_mnist(data)
    module, card = train_model(arch, load_dataset(data, "train"), load_dataset(data, "test"),
                               config)
    card = save_model(module, card, output)
    click.echo(f"wrote {output} ({card.parameters:,} parameters, test accuracy "
               f"{100 * (card.test_accuracy or 0):.2f} %, sha256 {(card.sha256 or '')[:12]})")


def torch_loading_options(command: Any) -> Any:
    """--arch and --trust-pickle, for every command that may load a PyTorch file."""
    command = click.option("--arch", help="Zoo architecture of a bare state_dict.")(command)
    return click.option("--trust-pickle", is_flag=True,
                        help="Allow loading a pickled nn.Module (runs code from the file).")(command)


@cli.command()
@click.argument("model", type=ModelArg)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@torch_loading_options
def inspect(model: Path, as_json: bool, arch: str | None, trust_pickle: bool) -> None:
    """Show a model's format, inputs/outputs, parameter count and ops (.pt, .pt2, .onnx, .tflite)."""
    from edgecnn.api import inspect as inspect_model
    info = inspect_model(model, trust_pickle=trust_pickle, arch=arch)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))
        return
    click.echo(f"{info.path}: {info.format}, {info.parameters:,} parameters")
    for key, value in info.details.items():
        if key != "card":
            click.echo(f"  {key}: {value}")
    io_rows = [{"io": kind, "name": t.name, "shape": "x".join(map(str, t.shape)),
                "dtype": t.dtype, "layout": t.layout, "quantization": t.quantization}
               for kind, ts in (("input", info.inputs), ("output", info.outputs)) for t in ts]
    emit_table(io_rows)
    emit_table(info.ops)


# -- convert / validate -------------------------------------------------------------------
def _numbers(kind: type, count: int | None = None) -> Any:
    """A click callback reading comma-separated numbers (``1,3,224,224``) into a tuple."""
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            numbers = tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of "
                                     f"{kind.__name__}s") from None
        if count is not None and len(numbers) != count:
            raise click.BadParameter(f"{value!r} has {len(numbers)} values; give {count}")
        return numbers
    return parse



def _method_names(ctx: click.Context, param: click.Parameter, value: str | None
                  ) -> tuple[str, ...] | None:
    """--budget-methods: comma-separated names, or ``none`` for no methods (Budget checks
    the names)."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _layer_names(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> tuple[str, ...]:
    """--int16-layers: comma-separated layer or node names."""
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


@cli.command()
@click.argument("model", type=ModelArg)
@click.option("--to", type=click.Choice(["onnx", "tflite"]), required=True)
@click.option("--int8", is_flag=True, help="Full-integer int8 (static PTQ, QDQ for ONNX).")
@click.option("--calib", type=PathArg, help="Calibration data (training images); default: the "
              "shipped 1,000-image MNIST training subset.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile", "mse"]),
              default="minmax", show_default=True)
@click.option("--per-tensor", is_flag=True, help="Per-tensor instead of per-channel weights.")
@click.option("--bias-correction", is_flag=True, help="Remove each int8 layer's mean shift "
              "from its bias (measured on the calibration images).")
@click.option("--adaround", is_flag=True, help="Learn each int8 weight's rounding, up or down, "
              "so every layer's output is closest to float (AdaRound; seconds per layer).")
@click.option("--cross-layer-equalization", is_flag=True, help="Before calibrating, equalise "
              "the weight ranges of consecutive Conv/Gemm layers joined by ReLU and absorb high "
              "biases (Nagel et al. 2019); the float model's outputs are kept, ReLU6 pairs are "
              "left alone. Helps channels of very different ranges, most with --per-tensor.")
@click.option("--int16-layers", callback=_layer_names, metavar="L[,L]",
              help="int8 with int16 activations for these layers (TFLite's 16x8: int8 "
              "weights, int16 outputs; names as `edgecnn layers` shows them, or ONNX node "
              "names; all: the whole model). For the few layers whose output range int8 cannot "
              "hold.")
@click.option("--io-dtype", type=click.Choice(["float32", "int8", "uint8"]),
              help="TFLite I/O type (int8 models default to int8).")
@click.option("--nchw-input", is_flag=True, help="Keep NCHW input (adds one leading TRANSPOSE).")
@click.option("--onnx-int8-encoding", type=click.Choice(["u8s8", "u8s7", "uint8", "int8"]),
              default="u8s8", show_default=True,
              help="How an int8 ONNX file stores its integers. u8s8: uint8 activations, int8 "
              "weights, onnxruntime's fast kernels (on x86 without VNNI exact only with "
              "session.x64quantprecision=1, which edgecnn sets). u8s7: 7-bit weights, exact on "
              "every CPU with no option. uint8: exact everywhere, slower. int8: the TFLite form.")
@click.option("--for", "int8_for", type=click.Choice(["cpu", "npu", "mcu"]), default="cpu",
              show_default=True, help="What an int8 TFLite file is for. cpu: the fastest CPU file "
              "(a few ops as float islands). npu, mcu: integer-only, every op int8 (Ethos-U's "
              "Vela, FPU-less MCUs), or the op that cannot be is named.")
@click.option("--opset", default=18, show_default=True)
@click.option("--input-shape", callback=_numbers(int, 4), metavar="N,C,H,W",
              help="Fix an ONNX input's symbolic dims, e.g. 1,3,224,224.")
@click.option("--mean", callback=_numbers(float), metavar="M[,M,M]",
              help="Preprocessing mean per channel (recorded in the model card).")
@click.option("--std", callback=_numbers(float), metavar="S[,S,S]",
              help="Preprocessing std per channel (recorded in the model card).")
@click.option("--pixel-scale", type=float,
              help="Pixel scale before mean/std: x = (pixels * scale - mean) / std [1/255].")
@click.option("--max-drop", type=float, metavar="PP", help="int8 accuracy budget: keep the "
              "fewest layers float so accuracy on --data drops at most PP points.")
@click.option("--min-agreement", type=float, metavar="PCT", help="int8 budget: ... so argmax "
              "agreement with the float model on --data is at least PCT %.")
@click.option("--data", type=PathArg, help="Labelled images the budget is measured on; default: "
              "the shipped MNIST test set.")
@click.option("--max-float-layers", type=int, metavar="N",
              help="int8 budget: keep at most N layers float.")
@click.option("--budget-keep", type=click.Choice(["float", "int16"]),
              help="int8 budget: what the layers it takes out of int8 become [--for cpu: float; "
              "npu, mcu: int16, TFLite's 16x8, the only way out an integer-only file holds].")
@click.option("--budget-methods", callback=_method_names, metavar="M[,M]",
              help="int8 budget: post-training methods to try, each kept only where it helps, "
              "before any layer is kept float [cross-layer-equalization,mse,bias-correction]; "
              "none: keep layers float at once.")
@torch_loading_options
@click.option("-o", "--output", type=PathArg, help="Output file (default: beside MODEL).")
def convert(model: Path, to: str, int8: bool, calib: Path | None, calib_method: str,
            per_tensor: bool, io_dtype: str | None, nchw_input: bool, onnx_int8_encoding: str,
            opset: int, input_shape: tuple[int, ...] | None, mean: tuple[float, ...] | None,
            std: tuple[float, ...] | None, pixel_scale: float | None, max_drop: float | None,
            min_agreement: float | None, data: Path | None, max_float_layers: int | None,
            budget_methods: tuple[str, ...] | None, budget_keep: str | None,
            int16_layers: tuple[str, ...],
            int8_for: str, bias_correction: bool, adaround: bool,
            cross_layer_equalization: bool, arch: str | None,
            trust_pickle: bool,
            output: Path | None) -> None:
    """Convert MODEL (.pt, .pt2 or .onnx) to ONNX or TFLite, optionally int8; with --max-drop
    or --min-agreement, exit 1 when no choice of float layers meets the budget (the best found
    is written)."""
    from edgecnn.api import ConvertConfig
    from edgecnn.api import convert as run_convert
    from edgecnn.checks.budget import Budget
    limits = (max_drop, min_agreement, max_float_layers, budget_methods, budget_keep)
    budget = None
    if limits != (None, None, None, None, None):
        methods = {} if budget_methods is None else {"methods": budget_methods}
        budget = Budget(max_drop, min_agreement, max_float_layers, keep=budget_keep, **methods)
    config = ConvertConfig(to, int8, calib, calib_method, not per_tensor, io_dtype, nchw_input,
                           opset, trust_pickle, arch, onnx_int8_encoding, input_shape, mean, std,
                           pixel_scale, budget, data, int8_for, bias_correction, adaround,
                           cross_layer_equalization, int16_layers)
    result = run_convert(model, output, config)
    for key, value in result.rows()[0].items():
        click.echo(f"{key:>28}: {value}")
    if result.budget is not None and not result.budget.met:
        click.echo("edgecnn: the int8 accuracy budget was not met; the best found was written",
                   err=True)
        sys.exit(int(ExitStatus.CHECK_FAILED))


@cli.command()
@click.argument("models", type=ModelArg, nargs=-1, required=True)
@click.option("--data", type=PathArg, default=None,
              help="Labelled data (IDX folder/file, .npz, image folder); default: the shipped "
                   "MNIST test set.")
@click.option("--reference", type=ModelArg, help="Reference model (default: the first MODEL).")
@click.option("--runtime", help=f"Only these runtimes for the files they read: {RUNTIME_HELP}.")
@click.option("--placement", "placements", multiple=True, metavar="RUNTIME",
              help="Also score each PyTorch model here, e.g. torch-cuda:fp16, torch-cuda:bf16, "
                   "torch-cpu:bf16 (repeatable).")
@click.option("--max-drop", type=float, help="Fail if accuracy drops more than PP points.")
@click.option("--min-agreement", type=float, help="Fail if argmax agreement is below PCT %.")
@click.option("--max-steps", type=float, help="Fail if an int8 runtime's outputs are more than N "
              "quantisation steps from the QDQ reference.")
@click.option("--limit", type=int, help="Use only the first N images.")
@click.option("--batch-size", default=500, show_default=True)
@click.option("--json", "json_path", type=PathArg, help="Write the report as JSON.")
@click.option("--csv", "csv_path", type=PathArg, help="Write the table as CSV.")
@click.option("--markdown", "md_path", type=PathArg, help="Write the table as Markdown.")
@torch_loading_options
def validate(models: tuple[Path, ...], data: Path | None, reference: Path | None,
             runtime: str | None, max_drop: float | None, min_agreement: float | None,
             max_steps: float | None, limit: int | None, batch_size: int, json_path: Path | None, csv_path: Path | None,
             md_path: Path | None, arch: str | None, trust_pickle: bool,
             placements: tuple[str, ...]) -> None:
    """Parity report of MODELS against a reference; exit 1 when a threshold breaks."""
    from edgecnn.api import validate as run_validate
    from edgecnn.checks.validate import Thresholds
    from edgecnn.files.data import SHIPPED_TEST_SET
    from edgecnn.report import write_reports
    check_outputs(json_path, csv_path, md_path, inputs=(*models, reference, data))
    report = run_validate(list(models), data or SHIPPED_TEST_SET, reference=reference,
                          thresholds=Thresholds(max_drop, min_agreement, max_steps), runtime=runtime,
                          limit=limit, batch_size=batch_size, trust_pickle=trust_pickle, arch=arch,
                          placements=placements)
    rows = report.table_rows()
    click.echo(f"reference {report.reference}, {report.images:,} images from {report.data}, "
               f"CPU {report.cpu}")
    emit_table(rows)
    write_reports(report.to_dict(), rows, list(rows[0]), json_path=json_path, csv_path=csv_path,
                  markdown_path=md_path, title="edgecnn parity report")
    if not report.passed:
        click.echo("edgecnn: parity check failed", err=True)
        sys.exit(int(ExitStatus.CHECK_FAILED))


@cli.command()
@click.argument("float_model", type=ModelArg)
@click.argument("int8_model", type=ModelArg)
@click.option("--data", type=PathArg, default=None,
              help="Images (IDX folder/file, .npz, image folder); default: the shipped MNIST "
                   "test set.")
@click.option("--limit", default=300, show_default=True, help="Use only the first N images.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--top", type=int, help="Print only the N worst layers (files get all).")
@click.option("--json", "json_path", type=PathArg, help="Write every layer as JSON.")
@click.option("--csv", "csv_path", type=PathArg, help="Write the table as CSV.")
@click.option("--markdown", "md_path", type=PathArg, help="Write the table as Markdown.")
@click.option("--plot", "plot_path", type=PathArg, help="PNG of SQNR along the network's depth.")
@torch_loading_options
def layers(float_model: Path, int8_model: Path, data: Path | None, limit: int, batch_size: int,
           top: int | None, json_path: Path | None, csv_path: Path | None, md_path: Path | None,
           plot_path: Path | None, arch: str | None, trust_pickle: bool) -> None:
    """Where int8 loses accuracy: every quantised layer of INT8_MODEL (QDQ ONNX) against
    FLOAT_MODEL, worst own error first. "own": the layer fed float inputs; "total": int8 end to
    end. SQNR in dB (higher is better), max error in quantisation steps."""
    from edgecnn.api import layers as run_layers
    from edgecnn.checks.layer_table import plot_sqnr
    from edgecnn.files.data import SHIPPED_TEST_SET
    from edgecnn.report import write_reports
    if top is not None and top < 1:
        raise BadInputError(f"--top {top}: give a number of layers >= 1")
    require_matplotlib(plot_path)
    check_outputs(json_path, csv_path, md_path, plot_path, inputs=(float_model, int8_model, data))
    report = run_layers(float_model, int8_model, data or SHIPPED_TEST_SET, limit=limit,
                        batch_size=batch_size, trust_pickle=trust_pickle, arch=arch)
    rows = report.rows()
    click.echo(f"{report.int8_model} against {report.float_model}, {report.images:,} images from "
               f"{report.data}; worst own error first")
    emit_table(rows[:top], ["depth", "layer", "op", "own SQNR dB", "total SQNR dB",
                            "own max steps", "total max steps", "scale", "float min",
                            "float max", "clipped %"])
    write_reports(report.to_dict(), rows, list(rows[0]), json_path=json_path, csv_path=csv_path,
                  markdown_path=md_path, title="edgecnn int8 layer report")
    if plot_path:
        plot_sqnr(report.errors, plot_path, f"{Path(report.int8_model).name}: int8 error by layer")


@cli.command()
@click.argument("models", type=ModelArg, nargs=-1, required=True)
@click.option("--target", type=click.Choice(target_names()), default="cpu", show_default=True,
              help="ethos-u: compile with Arm's Vela, report its NPU share and estimate; mcu: run "
              "TFLite Micro's kernels, report the arena and parity with LiteRT's reference "
              "kernels.")
@click.option("--runtime", help=f"Only these runtimes: {RUNTIME_HELP} (cpu: torch, "
              "torch-cpu:bf16, onnxruntime, litert, tflite-runtime; cuda: torch-cuda:fp16, "
              "onnxruntime:CUDAExecutionProvider, ...; rpi: the board's).")
@click.option("--threads", type=int, help="Intra-op threads (default: the runtime's).")
@click.option("--batch", type=int,
              help="Images per run [default: the model's fixed batch, else 1].")
@click.option("--input-shape", callback=_numbers(int, 4), metavar="N,C,H,W",
              help="For a model with symbolic dims (as convert takes it); N is the batch.")
@click.option("--warmup", default=10, show_default=True)
@click.option("--runs", default=100, show_default=True, help="At least this many timed runs...")
@click.option("--min-time", default=1.0, show_default=True, help="...and at least this long (s).")
@click.option("--max-time", default=300.0, show_default=True,
              help="...but never longer than this per model and runtime (s).")
@click.option("--host", help="rpi over SSH: [user@]host.")
@click.option("--port", type=int, help="rpi over SSH: port.")
@click.option("--identity", type=PathArg, help="rpi over SSH: private key.")
@click.option("--known-hosts", type=PathArg, help="rpi over SSH: known_hosts file.")
@click.option("--ssh-config", type=PathArg, help="rpi over SSH: ssh_config file.")
@click.option("--timeout", default=60.0, show_default=True, help="rpi over SSH: seconds per step.")
@click.option("--setup", is_flag=True, help="rpi over SSH: pip-install a TFLite runtime if missing.")
@click.option("--remote-python", default="python3", show_default=True)
@click.option("--npu", "npus", multiple=True, metavar="CONFIG",
              help="ethos-u: Vela configuration(s), e.g. U55-128,U85-256 [default: U55-128].")
@click.option("--data", type=PathArg, help="mcu: labelled images for the parity check "
              "[default: the shipped MNIST test set for 28x28 grey models].")
@click.option("--json", "json_path", type=PathArg)
@click.option("--csv", "csv_path", type=PathArg)
@click.option("--markdown", "md_path", type=PathArg)
@click.option("--plot", "plot_path", type=PathArg, help="PNG of the latency distributions.")
@click.option("--wide", is_flag=True, help="Every column: load, first run, mean, spread, ratio.")
def bench(models: tuple[Path, ...], target: str, runtime: str | None, threads: int | None,
          batch: int | None, input_shape: tuple[int, ...] | None, warmup: int, runs: int,
          min_time: float, max_time: float, host: str | None,
          port: int | None, identity: Path | None, known_hosts: Path | None,
          ssh_config: Path | None, timeout: float, setup: bool, remote_python: str,
          npus: tuple[str, ...], data: Path | None, json_path: Path | None, csv_path: Path | None, md_path: Path | None,
          plot_path: Path | None, wide: bool) -> None:
    """Benchmark MODELS on a target: load, first inference, steady-state latency, RSS."""
    from edgecnn.api import bench as run_bench
    from edgecnn.bench import plot_latencies
    from edgecnn.report import write_reports
    require_matplotlib(plot_path)
    check_outputs(json_path, csv_path, md_path, plot_path, inputs=(*models, identity,
                                                                  known_hosts, ssh_config, data))
    options = _given_target_options(target, dict(
        host=host, port=port, identity=identity, known_hosts=known_hosts, ssh_config=ssh_config,
        timeout=timeout, setup=setup, remote_python=remote_python, npu=npus, data=data))
    report = run_bench(list(models), target, runtime=runtime, threads=threads, batch=batch,
                       input_shape=input_shape, warmup=warmup, runs=runs, min_time=min_time,
                       max_time=max_time, **options)
    rows = report.rows()
    if rows:
        emit_table(rows, report.table_columns(wide))
    # written even when every row failed its parity check: CI keeps the record of why
    write_reports(report.to_dict(), rows, list(rows[0]) if rows else report.table_columns(wide),
                  json_path=json_path, csv_path=csv_path, markdown_path=md_path,
                  title=f"edgecnn bench --target {target}")
    if plot_path and rows:
        plot_latencies(report, plot_path)
    for line in [*report.notes, *report.failures]:
        click.echo(f"edgecnn: {line}", err=True)
    if not report.passed:
        sys.exit(int(ExitStatus.CHECK_FAILED))


def _given_target_options(target: str, values: dict[str, Any]) -> dict[str, Any]:
    """The target options given on the command line (their defaults are the target's own);
    a flag the target does not take is refused, naming the targets that take it."""
    from click.core import ParameterSource

    from edgecnn.targets import target_options, targets_taking

    context = click.get_current_context()
    parameter = {"npu": "npus"}  # option name -> click parameter name, where they differ
    given = {name: value for name, value in values.items()
             if context.get_parameter_source(parameter.get(name, name))
             is ParameterSource.COMMANDLINE}
    takes = target_options(target)
    for name in given:
        if name not in takes:
            owners = targets_taking(name, besides=target)
            raise BadInputError(f"--{name.replace('_', '-')} is not an option of --target "
                                f"{target}" + (f"; it is for --target {', '.join(owners)}"
                                               if owners else ""))
    return given


@cli.command("download-mnist")
@click.argument("dest", type=PathArg)
@click.option("--mirror", "mirrors", multiple=True, help="Base URL (repeatable).")
def download_mnist_cmd(dest: Path, mirrors: tuple[str, ...]) -> None:
    """Fetch the four MNIST IDX files into DEST, verifying their checksums."""
    from edgecnn.files.data import MNIST_MIRRORS, download_mnist
    download_mnist(dest, mirrors or MNIST_MIRRORS)
    click.echo(f"MNIST ready in {dest}")


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary files and directories are removed."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    cli(prog_name="edgecnn")

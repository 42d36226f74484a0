"""The precision decision on mocked machines: AVX2-only CPUs never run bf16, native-bf16 CPUs run it under
``auto`` only when the probe shows it faster with agreeing masks, and the probe runs once (cached)."""

from __future__ import annotations

import warnings

import pytest

from medfoundry.errors import InputContractError
from medfoundry.models.hardware import CpuFeatures, cpu_features, parse_cpuinfo
from medfoundry.predict.precision import Probe, cached_probe, choose_precision

AVX2 = CpuFeatures("Intel(R) Core(TM) i7-8700", "AVX2", frozenset({"avx", "avx2", "fma"}))
AVX512_NO_BF16 = CpuFeatures("Intel(R) Xeon(R) Gold 6148", "AVX512", frozenset({"avx2", "avx512f", "avx512bw"}))
ZEN4 = CpuFeatures("AMD EPYC 9654", "AVX512", frozenset({"avx2", "avx512f", "avx512_bf16"}))
SPR = CpuFeatures("Intel(R) Xeon(R) Platinum 8480+", "AVX512", frozenset({"avx512f", "amx_bf16", "amx_tile"}))
GPU = CpuFeatures("any", "AVX2", frozenset({"avx2"}), cuda=True)


def _never() -> Probe:
    raise AssertionError("the probe must not run here")


@pytest.mark.parametrize("cpu, native", [(AVX2, False), (AVX512_NO_BF16, False), (ZEN4, True), (SPR, True),
                                         (GPU, True)])
def test_native_bf16_from_flags(cpu, native) -> None:
    assert cpu.native_bf16 is native


def test_fp32_is_taken_as_asked() -> None:
    assert choose_precision("fp32", ZEN4, _never).precision == "fp32"


@pytest.mark.parametrize("cpu", [AVX2, AVX512_NO_BF16])
def test_bf16_without_native_support_warns_and_falls_back(cpu) -> None:
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        choice = choose_precision("bf16", cpu, _never)
    assert choice.precision == "fp32"


def test_bf16_on_native_cpu_is_taken_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_precision("bf16", ZEN4, _never).precision == "bf16"


@pytest.mark.parametrize("cpu", [AVX2, AVX512_NO_BF16])
def test_auto_without_native_support_is_fp32_without_probing(cpu) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_precision("auto", cpu, _never).precision == "fp32"


@pytest.mark.parametrize("probe, expected", [
    (Probe(1.0, 0.5, 0.995), "bf16"),  # 2× faster, agreeing
    (Probe(1.0, 0.95, 0.995), "fp32"),  # not faster enough
    (Probe(1.0, 0.5, 0.9), "fp32"),  # masks differ
])
def test_auto_follows_the_probe(probe, expected) -> None:
    choice = choose_precision("auto", SPR, lambda: probe)
    assert choice.precision == expected and choice.probe == probe and choice.reason


def test_unknown_precision() -> None:
    with pytest.raises(InputContractError):
        choose_precision("fp8", ZEN4, _never)


def test_probe_is_measured_once_and_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path))
    calls = []

    def measure() -> Probe:
        calls.append(1)
        return Probe(1.0, 0.4, 0.99)

    assert cached_probe("m|cpu", measure)() == Probe(1.0, 0.4, 0.99)
    assert cached_probe("m|cpu", measure)() == Probe(1.0, 0.4, 0.99)
    assert len(calls) == 1 and (tmp_path / "precision.json").is_file()
    cached_probe("other|cpu", measure)()
    assert len(calls) == 2


def test_parse_cpuinfo() -> None:
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
    assert parse_cpuinfo(x86) == ("AMD EPYC", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd4f\n"
    assert "bf16" in parse_cpuinfo(arm)[1]


def test_this_machine_is_described() -> None:
    features = cpu_features()
    assert features.capability and isinstance(features.native_bf16, bool)

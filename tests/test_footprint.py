"""deepscope.footprint: the arithmetic, the constants against codecarbon's data, and the Meter's side effects."""

import importlib.resources
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings

import pytest

from deepscope import footprint
from deepscope.footprint import GRID_INTENSITY, WORLD, Footprint, Meter, estimate


def _codecarbon_data(name):
    codecarbon = pytest.importorskip("codecarbon")
    path = importlib.resources.files(codecarbon.__name__) / "data" / "private_infra" / name
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a connection is recorded, then refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def _logger_state(name):
    log = logging.getLogger(name)
    return list(log.handlers), log.level, log.propagate, log.disabled, list(log.filters)


# --- estimate: the arithmetic -----------------------------------------------------------------------------------------


def test_units_one_kilowatt_for_one_hour_is_one_kwh_and_the_world_intensity():
    result = estimate(3600, power_w=1000)
    assert result.energy_kwh == 1.0
    assert result.co2_g == WORLD == 475
    assert result.water_l == footprint.WUE_DATA_CENTRE
    assert result.method == "estimate: 1000.0 W × 3600.0 s × PUE 1.0"
    assert result.constants["grid_intensity_g_per_kwh"] == WORLD and result.constants["pue"] == 1.0


@pytest.mark.parametrize("factor", [0.5, 3.0, 7.25])
def test_energy_co2_and_water_are_linear_in_time_power_intensity_and_pue(factor):
    base = estimate(12.3, power_w=8.0, pue=1.2, intensity_g_per_kwh=300.0, water_l_per_kwh=1.5)
    longer = estimate(12.3 * factor, power_w=8.0, pue=1.2, intensity_g_per_kwh=300.0, water_l_per_kwh=1.5)
    stronger = estimate(12.3, power_w=8.0 * factor, pue=1.2, intensity_g_per_kwh=300.0, water_l_per_kwh=1.5)
    dirtier = estimate(12.3, power_w=8.0, pue=1.2, intensity_g_per_kwh=300.0 * factor, water_l_per_kwh=1.5)
    for scaled in (longer, stronger):
        assert scaled.energy_kwh == pytest.approx(factor * base.energy_kwh, rel=1e-12, abs=0)
        assert scaled.co2_g == pytest.approx(factor * base.co2_g, rel=1e-12, abs=0)
        assert scaled.water_l == pytest.approx(factor * base.water_l, rel=1e-12, abs=0)
    assert dirtier.energy_kwh == base.energy_kwh and dirtier.water_l == base.water_l
    assert dirtier.co2_g == pytest.approx(factor * base.co2_g, rel=1e-12, abs=0)
    assert base.co2_g == pytest.approx(base.energy_kwh * 300.0, rel=1e-12, abs=0)


def test_pue_scales_energy_co2_and_water():
    plain = estimate(100, power_w=50)
    centre = estimate(100, power_w=50, pue=footprint.PUE_DATA_CENTRE)
    for name in ("energy_kwh", "co2_g", "water_l"):
        assert getattr(centre, name) == pytest.approx(1.58 * getattr(plain, name), rel=1e-12, abs=0)
    assert centre.method.endswith("PUE 1.58")


def test_country_picks_its_intensity_case_insensitively():
    result = estimate(3600, power_w=1000, country="fra")
    assert result.co2_g == pytest.approx(GRID_INTENSITY["FRA"])
    assert result.constants["country"] == "FRA"
    given = estimate(3600, power_w=1000, country="FRA", intensity_g_per_kwh=10)
    assert given.co2_g == 10.0 and given.constants["grid_intensity_source"] == "given"


def test_the_country_table_matches_codecarbons_data():
    data = _codecarbon_data("global_energy_mix.json")
    assert "FRA" in GRID_INTENSITY and len(GRID_INTENSITY) >= 5
    for code, intensity in GRID_INTENSITY.items():
        assert intensity == data[code]["carbon_intensity"], code
        assert data[code]["year"] == 2023, code
    assert data["FRA"]["carbon_intensity"] == pytest.approx(56, abs=1)
    assert _codecarbon_data("carbon_intensity_per_source.json")["world_average"] == WORLD


def test_equivalents_and_json_round_trip():
    result = estimate(3600, power_w=1000, country="FRA")
    car, phone = result.equivalents()
    assert car.amount == pytest.approx(result.co2_g / footprint.CAR_G_CO2_PER_KM)
    assert phone.amount == pytest.approx(1.0 / footprint.SMARTPHONE_CHARGE_KWH)
    assert "EEA" in car.source and "EPA" in phone.source and "km" in str(car)
    stored = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert stored["schema_version"] == 1 and stored["co2_g"] == result.co2_g
    assert stored["constants"] == result.constants
    assert "kWh" in str(result) and "<table>" in result._repr_html_()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seconds": -1.0, "power_w": 1}, ValueError, "seconds must be a finite number ≥ 0"),
        ({"seconds": math.nan, "power_w": 1}, ValueError, "seconds"),
        ({"seconds": 1, "power_w": math.inf}, ValueError, "power_w must be a finite"),
        ({"seconds": 1, "power_w": -5}, ValueError, "power_w"),
        ({"seconds": 1, "power_w": "8"}, TypeError, "power_w must be a real number"),
        ({"seconds": True, "power_w": 1}, TypeError, "seconds"),
        ({"seconds": 1, "power_w": 1, "pue": 0.9}, ValueError, "pue must be finite and ≥ 1"),
        ({"seconds": 1, "power_w": 1, "pue": math.nan}, ValueError, "pue"),
        ({"seconds": 1, "power_w": 1, "intensity_g_per_kwh": -1}, ValueError, "intensity_g_per_kwh"),
        ({"seconds": 1, "power_w": 1, "water_l_per_kwh": math.nan}, ValueError, "water_l_per_kwh"),
        ({"seconds": 1, "power_w": 1, "country": 250}, TypeError, "ISO-3 code"),
    ],
)
def test_bad_inputs_say_what_is_valid(kwargs, error, message):
    seconds = kwargs.pop("seconds")
    with pytest.raises(error, match=message):
        estimate(seconds, **kwargs)


def test_unknown_country_lists_the_known_ones_and_the_way_out():
    with pytest.raises(ValueError, match="unknown country 'ATL'") as info:
        estimate(1, power_w=1, country="ATL")
    assert "FRA" in str(info.value) and "intensity_g_per_kwh" in str(info.value)


# --- Meter without codecarbon -----------------------------------------------------------------------------------------


def test_meter_estimate_equals_estimate_of_its_duration():
    with Meter(use_codecarbon=False, power_w=10) as meter:
        time.sleep(0.05)
    result = meter.footprint
    assert result == estimate(result.seconds, power_w=10)
    assert 0.05 <= result.seconds < 1.0


def test_meter_default_power_is_busy_threads_times_the_per_thread_estimate(monkeypatch):
    import torch

    with Meter(use_codecarbon=False, country="DEU") as meter:
        pass
    assert meter.footprint.constants["power_w"] == torch.get_num_threads() * footprint.CPU_W_PER_THREAD
    assert meter.footprint.constants["country"] == "DEU" and "threads × 4.0 W" in meter.footprint.method

    monkeypatch.delitem(sys.modules, "torch")  # torch not imported: os.cpu_count(), and torch stays unimported
    monkeypatch.setattr(footprint.os, "cpu_count", lambda: 3)
    with Meter(use_codecarbon=False) as meter:
        pass
    assert meter.footprint.constants["power_w"] == 12.0 and "torch" not in sys.modules


def test_meter_adds_the_gpu_draw_to_the_estimate(monkeypatch):
    import torch

    draws = iter([150_000, 250_000])  # mW at the start and at the end
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda index: next(draws))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Fake GPU {index}")
    with Meter(use_codecarbon=False, device="cuda:1") as meter:
        pass
    constants = meter.footprint.constants
    assert constants["gpu_power_w"] == 200.0 and constants["gpu_name"] == "Fake GPU 1"
    assert constants["power_w"] == constants["threads"] * footprint.CPU_W_PER_THREAD + 200.0
    assert Meter(use_codecarbon=False, device="cpu")._gpu is None


def test_meter_rejects_bad_arguments_before_the_block(monkeypatch):
    with pytest.raises(ValueError, match="power_w"):
        Meter(power_w=-1)
    with pytest.raises(ValueError, match="pue"):
        Meter(pue=0)
    with pytest.raises(ValueError, match="tracking_mode"):
        Meter(tracking_mode="rack")
    with pytest.raises(TypeError, match="use_codecarbon"):
        Meter(use_codecarbon="yes")
    with pytest.raises(ValueError, match=r"unknown country 'ITA'.*installing codecarbon"):
        Meter(country="ITA", use_codecarbon=False)  # not in the small table
    with pytest.raises(RuntimeError, match="after the `with"):
        _ = Meter(use_codecarbon=False).footprint
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"deepscope\[carbon\]"):
        Meter(use_codecarbon=True)
    assert not Meter()._use_codecarbon


def test_meter_estimate_still_set_when_the_block_raises():
    with pytest.raises(KeyError, match="boom"), Meter(use_codecarbon=False, power_w=5) as meter:
        raise KeyError("boom")
    assert meter.footprint.energy_kwh >= 0


# --- Meter with codecarbon --------------------------------------------------------------------------------------------


def test_meter_with_codecarbon_is_offline_writes_nothing_and_times_the_block(no_network, tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)
    left_in_its_folder = []

    class WatchedFolder(tempfile.TemporaryDirectory):  # the folder the tracker gets as output_dir
        def cleanup(self):
            left_in_its_folder.extend(os.listdir(self.name))
            super().cleanup()

    monkeypatch.setattr(tempfile, "TemporaryDirectory", WatchedFolder)
    logs_before = _logger_state("codecarbon"), _logger_state("")
    handlers_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning (save_to_file), no fallback warning
        with Meter(country="FRA") as meter:
            start = time.perf_counter()
            time.sleep(0.3)
            block = time.perf_counter() - start
    result = meter.footprint
    assert no_network == []
    assert list(tmp_path.iterdir()) == [] and left_in_its_folder == []
    assert (_logger_state("codecarbon"), _logger_state("")) == logs_before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers_before  # no lock file
    assert result.method == "codecarbon OfflineEmissionsTracker (country FRA)"
    assert block <= result.seconds < block + 0.05  # the block alone, not the tracker's start and stop
    assert result.energy_kwh > 0 and result.co2_g > 0 and result.water_l > 0
    assert result.co2_g / result.energy_kwh == pytest.approx(GRID_INTENSITY["FRA"], rel=1e-9)
    assert result.water_l / result.energy_kwh == pytest.approx(footprint.WUE_DATA_CENTRE, rel=1e-9)
    assert result.constants["codecarbon_version"] and result.constants["tracker_seconds"] >= result.seconds
    json.dumps(result.as_dict(), allow_nan=False)


def test_meter_with_codecarbon_and_no_country_uses_the_world_average_quietly(no_network, capfd, caplog, monkeypatch):
    codecarbon = pytest.importorskip("codecarbon")
    passed = {}

    class Recorded(codecarbon.OfflineEmissionsTracker):
        def __init__(self, **kwargs):
            passed.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Recorded)
    with Meter(pue=1.5, water_l_per_kwh=0) as meter:
        pass
    result = meter.footprint
    # neither its constructor's INFO and WARNING lines nor its "no data for WORLD" error, printed or propagated
    assert capfd.readouterr().err == ""
    assert [record.getMessage() for record in caplog.records if record.name.startswith("codecarbon")] == []
    assert result.method.startswith("codecarbon OfflineEmissionsTracker (country WORLD: no country given")
    assert result.co2_g / result.energy_kwh == pytest.approx(WORLD, rel=1e-9)
    assert result.water_l == 0.0 and no_network == []
    assert passed["country_iso_code"] == "WORLD" and passed["force_carbon_intensity_g_co2e_kwh"] == WORLD
    assert passed["pue"] == 1.5 and passed["wue"] == 0.0 and passed["output_methods"] == []
    assert passed["allow_multiple_runs"] is True and passed["log_level"] == "error"


def test_meter_with_codecarbon_accepts_its_countries_and_rejects_others():
    pytest.importorskip("codecarbon")
    assert Meter(country="ITA")._country == "ITA"  # in codecarbon's data, not in the small table
    ran = False
    with pytest.raises(ValueError, match="unknown country 'XYZ'"), Meter(country="XYZ"):
        ran = True
    assert not ran


def test_an_exception_in_the_block_propagates_and_stops_the_tracker(no_network):
    pytest.importorskip("codecarbon")
    threads_before = set(threading.enumerate())
    with pytest.raises(ZeroDivisionError), Meter(country="SWE") as meter:
        time.sleep(0.05)
        assert any(isinstance(thread, threading.Timer) for thread in threading.enumerate())  # the tracker runs
        1 / 0  # noqa: B018
    assert set(threading.enumerate()) == threads_before
    assert meter.footprint.method == "codecarbon OfflineEmissionsTracker (country SWE)"
    assert meter._tracker is None and meter._tracker_dir is None


def test_a_codecarbon_without_the_needed_arguments_falls_back_to_the_estimate(monkeypatch):
    codecarbon = pytest.importorskip("codecarbon")

    class OldTracker:
        def __init__(self, country_iso_code=None, save_to_file=True):
            raise AssertionError("must not be constructed")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", OldTracker)
    with (
        pytest.warns(RuntimeWarning, match="codecarbon could not start.*codecarbon ≥ 3"),
        Meter(country="FRA", power_w=20) as meter,
    ):
        pass
    assert meter.footprint.method.startswith("estimate: 20.0 W")
    assert "codecarbon_error" in meter.footprint.constants
    assert meter.footprint.constants["grid_intensity_g_per_kwh"] == GRID_INTENSITY["FRA"]
    with pytest.warns(RuntimeWarning, match="codecarbon could not start"), Meter(country="ITA", power_w=20) as meter:
        pass  # a country of codecarbon's data, not of the small table: the estimate takes codecarbon's figure
    italy = _codecarbon_data("global_energy_mix.json")["ITA"]["carbon_intensity"]
    assert meter.footprint.constants["grid_intensity_g_per_kwh"] == italy != WORLD
    assert meter.footprint.co2_g == pytest.approx(meter.footprint.energy_kwh * italy, rel=1e-12, abs=0)
    assert meter.footprint.constants["country"] == "ITA"
    with pytest.raises(TypeError, match="codecarbon ≥ 3"), Meter(use_codecarbon=True):
        pass


def test_footprint_is_frozen():
    result = estimate(1, power_w=1)
    assert isinstance(result, Footprint)
    with pytest.raises(AttributeError):
        result.co2_g = 0.0

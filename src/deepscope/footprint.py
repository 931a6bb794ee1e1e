"""The energy, CO₂-eq and water cost of a block of work (a training run, an evaluation, a benchmark).

What: :class:`Meter` times a ``with`` block and measures the electricity it used with codecarbon's
``OfflineEmissionsTracker`` when codecarbon is installed, or estimates it from a power and the duration otherwise;
:func:`estimate` does the same arithmetic for a power and a duration you already know. Both return a
:class:`Footprint`, a frozen result that stores as JSON (:meth:`Footprint.as_dict`) next to the run it describes.

Why: what a result cost is part of reporting it ("Reproducibility and footprint"): two trainings that reach the same
accuracy are not equivalent if one needs ten times the energy, and a run's provenance should say so.

Formula (W·s → kWh once, in :func:`estimate`; codecarbon applies the same PUE and WUE to the energy it measures)::

    energy_kWh = power_W × seconds × PUE / 3.6e6
    CO₂-eq_g   = energy_kWh × grid intensity (g CO₂-eq/kWh)
    water_L    = energy_kWh × WUE (L/kWh)

Caveats:
    - No RAPL energy counters in virtual machines (these project machines included): CPU power is then *estimated*,
      by codecarbon from the CPU load (4 W per thread for a CPU model it does not know, RAM a flat ~20 W in "machine"
      mode), or here as busy threads × :data:`CPU_W_PER_THREAD`. Read the figures as orders of magnitude.
    - Grid intensities are annual, location-based country averages; the hour and the supplier are not modelled.
    - Making the hardware (embodied emissions), the network and remote storage are not counted.
    - Water is on-site (cooling) water only; the water consumed to generate the electricity is not included.
    - codecarbon's default "machine" tracking mode charges everything the machine runs during the block to it.

Example:
    >>> from deepscope.footprint import Meter, estimate
    >>> estimate(3600, power_w=1000).energy_kwh
    1.0
    >>> with Meter(country="FRA") as meter:  # doctest: +SKIP
    ...     train(model)
    >>> meter.footprint.co2_g  # doctest: +SKIP
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import math
import numbers
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CAR_G_CO2_PER_KM",
    "CPU_W_PER_THREAD",
    "DEFAULT_COUNTRY",
    "GRID_INTENSITY",
    "PUE_DATA_CENTRE",
    "PUE_WORKSTATION",
    "SMARTPHONE_CHARGE_KWH",
    "WATER_ELECTRICITY_US",
    "WORLD",
    "WUE_DATA_CENTRE",
    "Equivalent",
    "Footprint",
    "Meter",
    "estimate",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of Footprint.as_dict()

# --- grid carbon intensity, g CO₂-eq per kWh --------------------------------------------------------------------------

WORLD: float = 475.0
"""World-average grid intensity (g CO₂-eq/kWh), the value codecarbon falls back on: ``"world_average": 475`` in
codecarbon's ``data/private_infra/carbon_intensity_per_source.json`` (codecarbon 3.3.2), which cites the IEA *Global
Energy & CO2 Status Report 2019*."""

GRID_INTENSITY: Mapping[str, float] = MappingProxyType(
    {
        # ISO-3 code: the "carbon_intensity" of that country in codecarbon 3.3.2's
        # data/private_infra/global_energy_mix.json, all for the year 2023 (the file's "year" field);
        # tests/test_footprint.py checks them against the installed file.
        "BRA": 98.348,
        "CAN": 170.043,
        "CHN": 582.317,
        "DEU": 380.95,
        "FRA": 56.039,
        "GBR": 237.589,
        "IND": 713.441,
        "JPN": 485.392,
        "SWE": 40.695,
        "USA": 369.473,
    }
)
"""Grid intensity (g CO₂-eq/kWh) of a few countries by ISO-3 code, from codecarbon's data (2023). With codecarbon
installed, :class:`Meter` accepts every country in its file (213 codes)."""

DEFAULT_COUNTRY = "WORLD"
"""The country code :class:`Meter` passes to codecarbon when none is given. codecarbon has no data under this code, so
it is always paired with the intensity :data:`WORLD`, passed explicitly: a country is never guessed (codecarbon's
online tracker would look the machine up on the network, and falls back on Canada without one)."""

# --- data-centre overheads --------------------------------------------------------------------------------------------

PUE_WORKSTATION: float = 1.0
"""Power usage effectiveness (facility energy / IT energy) of a machine with no data-centre overhead: a workstation or
a laptop. The default everywhere here; pass :data:`PUE_DATA_CENTRE` (or your provider's figure) for a data centre."""

PUE_DATA_CENTRE: float = 1.58
"""Average annual PUE reported in the Uptime Institute *Global Data Center Survey 2023* (the 2022 survey reported
1.55, the 2021 one 1.57)."""

WUE_DATA_CENTRE: float = 1.8
"""On-site water (L) per kWh consumed by an average US data centre: Shehabi et al., *United States Data Center Energy
Usage Report*, Lawrence Berkeley National Laboratory, 2016 (LBNL-1005775), for 2014. It is the water consumed (mostly
evaporated) by the cooling systems on the site; the water consumed to generate the electricity, about 7.6 L/kWh on the
US average in the same report (:data:`WATER_ELECTRICITY_US`), is not included. The default water factor here, so that
a footprint says what the same work costs in a typical data centre; an air-cooled workstation uses no water on site:
pass ``water_l_per_kwh=0`` for that."""

WATER_ELECTRICITY_US: float = 7.6
"""Water (L) consumed to generate one kWh of US electricity, average, from the same LBNL 2016 report; never a default.
Add it to :data:`WUE_DATA_CENTRE` (``water_l_per_kwh=9.4``) to count the water of the power plants too."""

CPU_W_PER_THREAD: float = 4.0
"""Estimated power (W) of one busy CPU thread: codecarbon's ``DEFAULT_POWER_PER_CORE = 4`` ("W per thread", in
``codecarbon/core/cpu.py``), which it uses for a CPU model missing from its TDP table, as these project machines'
"Intel(R) Xeon(R) Processor" is. An estimate, not a measurement; RAM, disks and fans are not in it."""

# --- everyday equivalents ---------------------------------------------------------------------------------------------

CAR_G_CO2_PER_KM: float = 106.6
"""Average CO₂ (g/km) of the new passenger cars registered in the EU, Iceland and Norway in 2023: European Environment
Agency, provisional 2023 data (WLTP type-approval values, tailpipe only, measured in the laboratory)."""

SMARTPHONE_CHARGE_KWH: float = 0.012
"""Electricity (kWh) of one full smartphone charge in the US EPA *Greenhouse Gas Equivalencies Calculator —
Calculations and References*: (14.46 Wh drawn in a 24-hour charging test − 22 h × 0.13 W in maintenance mode) / 1000."""

_CODECARBON_LOGGER = "codecarbon"
_COUNTRY_FILE = ("data", "private_infra", "global_energy_mix.json")
_TRACKING_MODES = ("machine", "process")


@dataclass(frozen=True, slots=True)
class Equivalent:
    """An everyday quantity with the same footprint, and the constant it was computed from.

    Attributes:
        name: a stable key, e.g. ``"car_km"``.
        amount: how many ``unit`` the footprint equals.
        unit: e.g. ``"km"``.
        description: what the unit is, e.g. ``"driven by an average new car in the EU (2023)"``.
        source: the constant used and where it comes from.
    """

    name: str
    amount: float
    unit: str
    description: str
    source: str

    def __str__(self) -> str:
        return f"{self.amount:.3g} {self.unit} {self.description} ({self.source})"


@dataclass(frozen=True, slots=True)
class Footprint:
    """The electricity, emissions and water of a block of work.

    Attributes:
        seconds: wall-clock duration of the block.
        energy_kwh: electricity used, data-centre overhead (PUE) included.
        co2_g: greenhouse-gas emissions of that electricity, in g CO₂-eq.
        water_l: on-site water consumed, in litres (``energy_kwh × WUE``).
        method: one sentence saying how it was obtained, e.g. ``"codecarbon OfflineEmissionsTracker (country FRA)"``
            or ``"estimate: 8.0 W × 12.3 s × PUE 1.0"``.
        constants: every constant used, each key ending with its unit (``pue``, ``grid_intensity_g_per_kwh``, …).
    """

    seconds: float
    energy_kwh: float
    co2_g: float
    water_l: float
    method: str
    constants: dict[str, Any] = field(default_factory=dict)

    def equivalents(self) -> tuple[Equivalent, ...]:
        """The footprint in everyday terms: kilometres by car (CO₂) and smartphone charges (energy)."""
        return (
            Equivalent(
                "car_km",
                self.co2_g / CAR_G_CO2_PER_KM,
                "km",
                "driven by an average new car in the EU (2023)",
                f"{CAR_G_CO2_PER_KM} g CO₂/km, EEA provisional 2023 data, WLTP tailpipe",
            ),
            Equivalent(
                "smartphone_charges",
                self.energy_kwh / SMARTPHONE_CHARGE_KWH,
                "charges",
                "of a smartphone, empty to full",
                f"{SMARTPHONE_CHARGE_KWH} kWh per charge, US EPA Greenhouse Gas Equivalencies Calculator",
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (plain floats, strings and a ``schema_version``) for storing with a run."""
        return {
            "schema_version": SCHEMA_VERSION,
            "seconds": float(self.seconds),
            "energy_kwh": float(self.energy_kwh),
            "co2_g": float(self.co2_g),
            "water_l": float(self.water_l),
            "method": self.method,
            "constants": json.loads(json.dumps(self.constants, allow_nan=False)),
        }

    def __str__(self) -> str:
        return (
            f"{self.energy_kwh:.3g} kWh, {self.co2_g:.3g} g CO₂-eq, {self.water_l:.3g} L of water "
            f"in {self.seconds:.3g} s ({self.method})"
        )

    def _repr_html_(self) -> str:
        rows = [
            ("duration", f"{self.seconds:.3g} s"),
            ("energy", f"{self.energy_kwh:.3g} kWh"),
            ("emissions", f"{self.co2_g:.3g} g CO₂-eq"),
            ("water", f"{self.water_l:.3g} L"),
            *((item.name, str(item)) for item in self.equivalents()),
            ("method", self.method),
        ]
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table>{cells}</table>"


def estimate(
    seconds: float,
    *,
    power_w: float,
    pue: float = PUE_WORKSTATION,
    intensity_g_per_kwh: float | None = None,
    water_l_per_kwh: float = WUE_DATA_CENTRE,
    country: str | None = None,
) -> Footprint:
    """The footprint of drawing ``power_w`` for ``seconds``: pure arithmetic (see the module's formula).

    Args:
        seconds: duration, ≥ 0.
        power_w: average electrical power of the hardware doing the work, ≥ 0 (e.g. busy threads ×
            :data:`CPU_W_PER_THREAD`, plus the GPU's draw).
        pue: power usage effectiveness, ≥ 1 (:data:`PUE_WORKSTATION`; :data:`PUE_DATA_CENTRE` for a data centre).
        intensity_g_per_kwh: grid carbon intensity, ≥ 0; default: the ``country``'s, else :data:`WORLD`.
        water_l_per_kwh: on-site water per kWh, ≥ 0 (:data:`WUE_DATA_CENTRE`).
        country: ISO-3 code of a country in :data:`GRID_INTENSITY`, for its intensity (and recorded either way).

    Returns:
        A :class:`Footprint` whose ``method`` reads ``"estimate: 8.0 W × 12.3 s × PUE 1.0"``.

    Raises:
        TypeError: a number or the country has the wrong type.
        ValueError: a number is negative, NaN or infinite, ``pue < 1``, or the country is unknown.

    Example:
        >>> estimate(3600, power_w=1000, country="FRA").co2_g
        56.039
    """
    seconds = _non_negative("seconds", seconds)
    power_w = _non_negative("power_w", power_w)
    pue = _pue(pue)
    water_l_per_kwh = _non_negative("water_l_per_kwh", water_l_per_kwh)
    country = _country(country, GRID_INTENSITY)
    intensity, source = _intensity(intensity_g_per_kwh, country, GRID_INTENSITY)
    energy_kwh = power_w * seconds * pue / 3.6e6  # W·s = J; 1 kWh = 3.6e6 J
    return Footprint(
        seconds=seconds,
        energy_kwh=energy_kwh,
        co2_g=energy_kwh * intensity,
        water_l=energy_kwh * water_l_per_kwh,
        method=f"estimate: {_short(power_w)} W × {_short(seconds)} s × PUE {_short(pue)}",
        constants={
            "power_w": power_w,
            "pue": pue,
            "country": country,
            "grid_intensity_g_per_kwh": intensity,
            "grid_intensity_source": source,
            "water_l_per_kwh": water_l_per_kwh,
        },
    )


class Meter:
    """Measure the footprint of a ``with`` block; read it from ``meter.footprint`` after the block.

    With codecarbon installed (``pip install 'deepscope[carbon]'``) and ``use_codecarbon`` not False, the block runs
    under codecarbon's ``OfflineEmissionsTracker`` — never the online tracker — with an explicit country, no output
    (no file, no API, no lock file, no Electricity Maps token), its log level at "error" and its logger put back as it
    was afterwards. Otherwise, or if codecarbon fails (a warning says so), the footprint is
    ``estimate(seconds, power_w=...)`` with the block's duration. The tracker is stopped, and its threads joined, also
    when the block raises; the exception propagates and the footprint of the failed block is still set.

    Args:
        country: ISO-3 code of the grid the machine draws from. With codecarbon, any code of its data file; without,
            one of :data:`GRID_INTENSITY`. Default: :data:`DEFAULT_COUNTRY`, at the world-average intensity
            :data:`WORLD`, and ``method`` says so.
        intensity_g_per_kwh: a grid intensity to use instead of the country's (codecarbon's
            ``force_carbon_intensity_g_co2e_kwh``).
        pue: power usage effectiveness, ≥ 1 (:data:`PUE_WORKSTATION`).
        water_l_per_kwh: on-site water per kWh, ≥ 0 (:data:`WUE_DATA_CENTRE`).
        power_w: the power used by the estimate (when codecarbon is not used or fails). Default: busy threads ×
            :data:`CPU_W_PER_THREAD` — ``torch.get_num_threads()`` if torch is already imported, else
            ``os.cpu_count()`` — plus, with a CUDA ``device``, the GPU's power draw averaged over the block's start
            and end.
        use_codecarbon: None (default) uses codecarbon when it is installed; True requires it; False never uses it.
        device: the device doing the work, e.g. ``"cuda:0"``; only a CUDA device changes anything (torch is then
            imported to read its name and power; codecarbon tracks that GPU alone).
        tracking_mode: codecarbon's ``"machine"`` (default: the whole machine's load) or ``"process"`` (this process
            and its children).

    Raises:
        TypeError, ValueError: invalid arguments (see :func:`estimate`); a CUDA ``device`` without CUDA.
        ModuleNotFoundError: ``use_codecarbon=True`` without codecarbon installed (TypeError on entering the block
            for a codecarbon older than 3).
        RuntimeError: on entering the block, a CUDA ``device`` whose power draw cannot be read, without ``power_w``.

    Example:
        >>> with Meter(use_codecarbon=False, power_w=10) as meter:
        ...     total = sum(range(1000))
        >>> meter.footprint.method.startswith("estimate: 10.0 W")
        True
    """

    def __init__(
        self,
        country: str | None = None,
        *,
        intensity_g_per_kwh: float | None = None,
        pue: float = PUE_WORKSTATION,
        water_l_per_kwh: float = WUE_DATA_CENTRE,
        power_w: float | None = None,
        use_codecarbon: bool | None = None,
        device: object = None,
        tracking_mode: str = "machine",
    ) -> None:
        if use_codecarbon not in (None, True, False):
            raise TypeError(f"use_codecarbon must be None (automatic), True or False, got {use_codecarbon!r}")
        if tracking_mode not in _TRACKING_MODES:
            raise ValueError(f"tracking_mode must be one of {_TRACKING_MODES}, got {tracking_mode!r}")
        self._pue = _pue(pue)
        self._water = _non_negative("water_l_per_kwh", water_l_per_kwh)
        self._power_w = None if power_w is None else _non_negative("power_w", power_w)
        self._intensity = (
            None if intensity_g_per_kwh is None else _non_negative("intensity_g_per_kwh", intensity_g_per_kwh)
        )
        self._tracking_mode = tracking_mode
        self._gpu = _cuda_index(device)
        installed = importlib.util.find_spec("codecarbon") is not None
        if use_codecarbon and not installed:
            raise ModuleNotFoundError(
                "use_codecarbon=True but codecarbon is not installed: pip install 'deepscope[carbon]'",
                name="codecarbon",
            )
        self._use_codecarbon = installed and use_codecarbon is not False
        self._require_codecarbon = bool(use_codecarbon)
        table = _codecarbon_countries() if self._use_codecarbon else GRID_INTENSITY
        hint = "" if self._use_codecarbon else " (installing codecarbon adds every country of its data)"
        self._country = _country(country, table, hint=hint)
        self._footprint: Footprint | None = None
        self._running = False
        self._tracker: Any = None
        self._tracker_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_state: tuple[Any, ...] | None = None
        self._fallback: str | None = None
        self._gpu_start_w: float | None = None
        self._start = 0.0

    @property
    def footprint(self) -> Footprint:
        """The footprint of the last completed block; RuntimeError before the first block ends."""
        if self._footprint is None:
            raise RuntimeError("no footprint yet: read meter.footprint after the `with Meter(...) as meter:` block")
        return self._footprint

    def __enter__(self) -> Meter:
        if self._running:
            raise RuntimeError("this Meter is already measuring a block: use one Meter per nested block")
        self._footprint, self._fallback, self._gpu_start_w = None, None, None
        if self._gpu is not None and self._power_w is None:
            self._gpu_start_w = _gpu_power_w(self._gpu)
        if self._use_codecarbon:
            self._start_tracker()
        self._running = True
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        seconds = time.perf_counter() - self._start
        self._running = False
        try:
            self._footprint = self._measured(seconds) if self._tracker is not None else self._estimated(seconds)
        except Exception as error:
            if exc_type is None:
                raise
            # never hide the block's own exception behind a failure to measure it
            warnings.warn(f"deepscope.footprint: could not compute the footprint: {error!r}", RuntimeWarning, 2)

    # --- codecarbon ---------------------------------------------------------------------------------------------------

    def _start_tracker(self) -> None:
        self._log_state = _logger_state(logging.getLogger(_CODECARBON_LOGGER))  # before the import, which sets it up
        try:
            from codecarbon import OfflineEmissionsTracker

            cc_logger = logging.getLogger(_CODECARBON_LOGGER)
            cc_logger.setLevel(logging.ERROR)  # its constructor logs at INFO/WARNING before applying log_level
            if self._country == DEFAULT_COUNTRY:
                cc_logger.addFilter(_drop_world_error)
            self._tracker_dir = tempfile.TemporaryDirectory(prefix="deepscope-codecarbon-")
            kwargs = self._tracker_kwargs(self._tracker_dir.name)
            _check_supported(OfflineEmissionsTracker, kwargs)
            self._tracker = OfflineEmissionsTracker(**kwargs)
            self._tracker.start()
        except Exception as error:
            self._release_tracker()
            if self._require_codecarbon:
                raise
            self._fallback = f"codecarbon could not start: {error!r}"
            warnings.warn(f"deepscope.footprint: {self._fallback}; estimating instead", RuntimeWarning, 3)

    def _tracker_intensity(self) -> float:
        """The intensity codecarbon applies: the one given, :data:`WORLD` for no country, else its country's."""
        if self._intensity is not None:
            return self._intensity
        return WORLD if self._country == DEFAULT_COUNTRY else _codecarbon_countries()[self._country]

    def _tracker_kwargs(self, output_dir: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "country_iso_code": self._country,
            "output_methods": [],  # no CSV / API / logger output (replaces the deprecated save_to_file=False)
            "output_handlers": [],
            "emissions_endpoint": None,
            "output_dir": output_dir,  # a temporary folder for any helper file (power-gadget logs): never the cwd
            "electricitymaps_api_token": "",  # "" and not None: None lets a token from its config or env through
            "allow_multiple_runs": True,  # no /tmp/.codecarbon.lock, no SIGINT/SIGTERM handlers, no atexit hook
            "log_level": "error",
            "tracking_mode": self._tracking_mode,
            "pue": self._pue,
            "wue": self._water,
            "project_name": "deepscope",
        }
        if self._intensity is not None or self._country == DEFAULT_COUNTRY:
            kwargs["force_carbon_intensity_g_co2e_kwh"] = self._tracker_intensity()
        if self._gpu is not None:
            kwargs["gpu_ids"] = [self._gpu]
        return kwargs

    def _measured(self, seconds: float) -> Footprint:
        tracker = self._tracker
        try:
            tracker.stop()  # codecarbon swallows (and logs) its own exceptions here
        finally:
            self._release_tracker()
        data = getattr(tracker, "final_emissions_data", None)
        if data is None:
            self._fallback = "codecarbon returned no measurement"
            warnings.warn(f"deepscope.footprint: {self._fallback}; estimating instead", RuntimeWarning, 3)
            return self._estimated(seconds)
        energy = float(data.energy_consumed)
        co2_g = float(data.emissions) * 1000.0  # kg → g
        intensity = self._tracker_intensity()
        if self._country == DEFAULT_COUNTRY and self._intensity is None:
            where = f"country {DEFAULT_COUNTRY}: no country given, world average {_short(WORLD)} g CO₂-eq/kWh"
        elif self._intensity is not None:
            where = f"country {self._country}, intensity {_short(self._intensity)} g CO₂-eq/kWh given"
        else:
            where = f"country {self._country}"
        constants = {
            "country": self._country,
            "grid_intensity_g_per_kwh": intensity,
            "pue": self._pue,
            "water_l_per_kwh": self._water,
            "tracking_mode": self._tracking_mode,
            "tracker_seconds": float(data.duration),
            "cpu_energy_kwh": float(data.cpu_energy),
            "ram_energy_kwh": float(data.ram_energy),
            "gpu_energy_kwh": float(data.gpu_energy),
            "cpu_power_w": float(data.cpu_power),
            "ram_power_w": float(data.ram_power),
            "gpu_power_w": float(data.gpu_power),
            "cpu_model": str(data.cpu_model),
            "gpu_model": str(data.gpu_model),
            "codecarbon_version": str(data.codecarbon_version),
        }
        return Footprint(
            seconds=seconds,
            energy_kwh=energy,
            co2_g=co2_g,
            water_l=float(data.water_consumed),
            method=f"codecarbon OfflineEmissionsTracker ({where})",
            constants=constants,
        )

    def _release_tracker(self) -> None:
        """Join the tracker's timer threads, delete its folder and put codecarbon's logger back as it was."""
        try:
            if self._tracker is not None:
                _join_timers(self._tracker)
        finally:
            self._tracker = None
            if self._tracker_dir is not None:
                self._tracker_dir.cleanup()
                self._tracker_dir = None
            if self._log_state is not None:
                _restore_logger(logging.getLogger(_CODECARBON_LOGGER), self._log_state)
                self._log_state = None

    # --- estimate -----------------------------------------------------------------------------------------------------

    def _estimated(self, seconds: float) -> Footprint:
        country = None if self._country == DEFAULT_COUNTRY else self._country
        intensity = self._intensity
        power, extra, notes = self._power()
        if country is not None and country not in GRID_INTENSITY:
            # a country of codecarbon's data only (codecarbon failed to start or to measure): its own figure
            extra["country"] = country
            if intensity is None:
                intensity = _codecarbon_countries()[country]
                extra["grid_intensity_source"] = "codecarbon global_energy_mix.json"
            country = None
        result = estimate(
            seconds,
            power_w=power,
            pue=self._pue,
            intensity_g_per_kwh=intensity,
            water_l_per_kwh=self._water,
            country=country,
        )
        if self._fallback is not None:
            extra["codecarbon_error"] = self._fallback
            notes.append(self._fallback)
        if not extra and not notes:
            return result  # exactly estimate(seconds, power_w=...)
        method = result.method + (f" ({'; '.join(notes)})" if notes else "")
        return replace(result, method=method, constants={**result.constants, **extra})

    def _power(self) -> tuple[float, dict[str, Any], list[str]]:
        """The estimate's power, the constants it adds and its notes for ``method``."""
        extra: dict[str, Any] = {}
        notes: list[str] = []
        if self._gpu is not None:
            extra["gpu_name"] = _gpu_name(self._gpu)
        if self._power_w is not None:
            return self._power_w, extra, notes
        threads = _busy_threads()
        power = threads * CPU_W_PER_THREAD
        extra |= {"threads": threads, "cpu_w_per_thread": CPU_W_PER_THREAD}
        notes.append(f"{threads} threads × {_short(CPU_W_PER_THREAD)} W, codecarbon's default")
        if self._gpu is not None and self._gpu_start_w is not None:
            gpu_w = (self._gpu_start_w + _gpu_power_w(self._gpu)) / 2  # mean of the draws at the start and the end
            power += gpu_w
            extra["gpu_power_w"] = gpu_w
            notes.append(f"+ {extra['gpu_name']} at {_short(gpu_w)} W")
        return power, extra, notes


# --- helpers ----------------------------------------------------------------------------------------------------------


def _short(x: float) -> str:
    """``8.0``, ``12.3``, ``1.58``, ``0.301``: one decimal from 10 up, three significant digits below."""
    if x >= 10:
        return f"{x:.1f}"
    text = f"{x:.3g}"
    return text if "." in text or "e" in text else text + ".0"


def _number(name: str, value: object, low: float, valid: str) -> float:
    """``value`` as a float ≥ ``low``; TypeError for a non-number (bools included), ValueError saying ``valid``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < low:
        raise ValueError(f"{name} must be {valid}; got {number}")
    return number


def _non_negative(name: str, value: object) -> float:
    return _number(name, value, 0.0, "a finite number ≥ 0")


def _pue(value: object) -> float:
    valid = f"finite and ≥ 1 (total facility energy / IT energy): 1.0 for a workstation, {PUE_DATA_CENTRE} on average"
    return _number("pue", value, 1.0, valid + " for a data centre")


def _country(country: object, table: Mapping[str, float], *, hint: str = "") -> str:
    """The upper-case ISO-3 code, checked against ``table``; :data:`DEFAULT_COUNTRY` for None."""
    if country is None:
        return DEFAULT_COUNTRY
    if not isinstance(country, str):
        raise TypeError(f"country must be an ISO-3 code such as 'FRA', got {type(country).__name__} {country!r}")
    code = country.strip().upper()
    if code == DEFAULT_COUNTRY or code in table:
        return code
    known = sorted(table)
    shown = ", ".join(known if len(known) <= 20 else [*sorted(GRID_INTENSITY), "…"])
    raise ValueError(
        f"unknown country {country!r}: the known ISO-3 codes are {shown} ({len(known)} in all){hint}; "
        "for another grid, pass intensity_g_per_kwh without a country"
    )


def _intensity(given: float | None, country: str, table: Mapping[str, float]) -> tuple[float, str]:
    if given is not None:
        return _non_negative("intensity_g_per_kwh", given), "given"
    if country == DEFAULT_COUNTRY:
        return WORLD, "world average used by codecarbon (IEA 2019)"
    return table[country], "codecarbon 3.3.2 global_energy_mix.json (2023)"


def _busy_threads() -> int:
    """``torch.get_num_threads()`` if torch is already imported (never imported here), else ``os.cpu_count()``."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    return os.cpu_count() or 1


def _cuda_index(device: object) -> int | None:
    """The CUDA device index of ``device``, or None for no device or a non-CUDA one."""
    if device is None or getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    import torch  # only now: the caller says a GPU does the work

    parsed = torch.device(device)
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is a CUDA device, but torch.cuda.is_available() is False")
    return parsed.index if parsed.index is not None else torch.cuda.current_device()


def _gpu_name(index: int) -> str:
    import torch

    return str(torch.cuda.get_device_name(index))


def _gpu_power_w(index: int) -> float:
    import torch

    try:
        return float(torch.cuda.power_draw(index)) / 1000.0  # mW, averaged by NVML over its last sample period
    except Exception as error:  # no pynvml, no NVML support on this GPU
        raise RuntimeError(f"cannot read the power draw of cuda:{index} ({error!r}); pass power_w") from error


def _codecarbon_countries() -> Mapping[str, float]:
    """ISO-3 code → intensity from the installed codecarbon's data file, read without importing codecarbon."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return GRID_INTENSITY
    return _read_countries(str(Path(next(iter(spec.submodule_search_locations))).joinpath(*_COUNTRY_FILE)))


_COUNTRIES_CACHE: dict[str, Mapping[str, float]] = {}


def _read_countries(path: str) -> Mapping[str, float]:
    if path not in _COUNTRIES_CACHE:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        _COUNTRIES_CACHE[path] = MappingProxyType(
            {
                code: float(row["carbon_intensity"])
                for code, row in data.items()
                if row.get("carbon_intensity") is not None
            }
        )
    return _COUNTRIES_CACHE[path]


def _check_supported(tracker_class: type, kwargs: Mapping[str, Any]) -> None:
    """Refuse a codecarbon too old for these arguments rather than drop one (each keeps a file or a socket closed)."""
    import inspect

    accepted = {name for cls in tracker_class.__mro__ for name in inspect.signature(cls.__init__).parameters}
    missing = sorted(set(kwargs) - accepted)
    if missing:
        raise TypeError(f"this codecarbon does not accept {missing}: deepscope needs codecarbon ≥ 3")


def _drop_world_error(record: logging.LogRecord) -> bool:
    """Hide codecarbon's error about :data:`DEFAULT_COUNTRY` having no data: the intensity is passed explicitly."""
    return not (record.levelno >= logging.ERROR and f"ISO code {DEFAULT_COUNTRY}" in record.getMessage())


def _logger_state(log: logging.Logger) -> tuple[Any, ...]:
    return (list(log.handlers), log.level, log.propagate, log.disabled, list(log.filters))


def _restore_logger(log: logging.Logger, state: tuple[Any, ...]) -> None:
    handlers, level, propagate, disabled, filters = state
    for handler in log.handlers:
        if handler not in handlers:
            handler.close()
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate, log.disabled = propagate, disabled
    log.filters[:] = filters


def _join_timers(tracker: object, timeout: float = 5.0) -> None:
    """Cancel and join the ``threading.Timer`` threads of the tracker's schedulers.

    codecarbon's ``PeriodicScheduler.stop`` cancels the pending timer without joining it, and a timer that fired just
    before can re-arm a new one (``_run`` restarts before running): scan again until none is left.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and _timer_owner(t) is tracker]
        if not timers:
            return
        for timer in timers:
            timer.cancel()
            timer.join(max(0.0, deadline - time.monotonic()))
    logger.warning("codecarbon timer threads still running after %.0f s", timeout)


def _timer_owner(timer: threading.Timer) -> object:
    """The tracker a timer works for, or None.

    ``Timer.function`` is a ``PeriodicScheduler._run`` whose ``function`` is a bound method of the tracker.
    """
    scheduler = getattr(getattr(timer, "function", None), "__self__", None)
    return getattr(getattr(scheduler, "function", None), "__self__", None)

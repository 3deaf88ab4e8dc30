"""The ``delivery:`` section of node.yaml: when delivery runs, links, packages, retries.

One strict model (unknown keys are errors, values are immutable). Every field states its
unit and default next to it; the shipped node.yaml repeats them as comments. Validation
messages name what is expected; :mod:`node.config` adds the file, line and dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delivery.window import DeliveryWindow, WindowError, parse_zone

if TYPE_CHECKING:
    from delivery.packaging.viewer import ViewerOptions
from release.policy import ReleasePolicy


class DeliverySettings(BaseModel):
    """Delivery timing, links, packages, the outbox's retries and the patient's codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    overdue_after_h: float = Field(
        default=72.0,
        gt=0,
        le=24 * 365,
        description="Hours. A request still missing studies this long after creation is "
        "overdue: staff are alerted and it becomes a CD candidate. Default 72.",
    )
    cd_after_h: float = Field(
        default=24.0,
        gt=0,
        le=24 * 365,
        description="Hours. A request overdue for this long (counted from when it became "
        "overdue) is put in the CD burn queue and staff are alerted. Requests whose "
        "delivery failed permanently, or whose link expired unopened, are queued at once. "
        "Default 24.",
    )
    window: str = Field(
        default="01:00-05:00",
        description="Nightly delivery window, local HH:MM-HH:MM in `timezone`; may wrap "
        "midnight (22:00-02:00); start and end differ. Routine requests are packaged and "
        "sent when it opens. Default 01:00-05:00.",
    )
    timezone: str = Field(
        default="Europe/London",
        description="IANA time zone of `window` (e.g. Europe/London, America/New_York). "
        "Default Europe/London.",
    )
    link_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Days a patient's download link stays valid after it is sent. Default 30.",
    )
    max_package_mb: int = Field(
        default=2000,
        ge=0,
        le=1_000_000,
        description="Megabytes (10^6 bytes). A package larger than this is split into parts "
        "of at most this size (a single instance larger than it gets a part of its own). "
        "0: never split. Default 2000.",
    )
    release: ReleasePolicy | None = Field(
        default=None,
        description="The site's release policy, for studies whose release rule has no "
        "`release:` block of its own: `after: 72h` (an embargo; Nh elapsed hours, Nd "
        "calendar days in `timezone`) counted `from: arrival` or `from: study_date`, and/or "
        "`until: report_final` with `max_wait: 7d` and `then: hold_for_staff` or "
        "`release_images`. A held request shows it on its staff page; staff may release "
        "it early (with a reason, audited) or hold it longer. Default empty: released as "
        "soon as ready.",
    )
    staff_email: str | None = Field(
        default=None,
        description="Address for staff alerts (overdue requests, failed deliveries, locked "
        "links, a failed rules reload). Empty: alerts are only logged and recorded. "
        "Default empty.",
    )
    contact: str = Field(
        default="",
        max_length=300,
        description="Who patients contact with questions, as the package README and the "
        "link email show it (e.g. 'Imaging records, 020 7946 0000, Mon-Fri 9-5'). "
        "Default empty: the README says to contact the hospital.",
    )
    urgent_check_s: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="Seconds between looks for ready urgent requests, which go at once "
        "whatever the window; 20 sends them within a minute. Default 20.",
    )
    sweep_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds between the housekeeping sweeps (stability, overdue requests, "
        "expired links, purge). Default 60.",
    )
    misfire_grace_h: float = Field(
        default=6.0,
        gt=0,
        le=24,
        description="Hours. A nightly batch that could not start on time (the node was busy "
        "or suspended) still runs if it can start within this long; later, the next "
        "start-up catches the missed night up. Default 6.",
    )
    retry_base_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="Seconds before the outbox's first retry of a message that failed for "
        "a temporary reason; each retry waits about twice as long, with jitter. Default 30.",
    )
    retry_cap_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description="Seconds: the longest wait between two retries (at least "
        "retry_base_s). Default 3600.",
    )
    max_attempts: int = Field(
        default=12,
        ge=1,
        le=1000,
        description="Attempts per message (the first send included) before the outbox "
        "gives up, marks the delivery failed and alerts staff. Default 12.",
    )
    code_ttl_min: int = Field(
        default=10,
        ge=1,
        le=60,
        description="Minutes a one-time code sent to the patient stays valid. Default 10.",
    )
    code_max_tries: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Wrong tries one code accepts before it is void (the patient asks for "
        "a new one; code_daily_failures_lock wrong tries in a day lock the link). "
        "Default 5.",
    )
    code_daily_failures_lock: int = Field(
        default=20,
        ge=5,
        le=1000,
        description="Wrong codes for one link within a day (counted from the first of "
        "them, across codes) that lock the link until staff re-issue it; staff are "
        "alerted. Default 20.",
    )
    code_sends_per_hour: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Codes one link may have sent per rolling hour. Default 5.",
    )
    reminder_days_before: int = Field(
        default=3,
        ge=0,
        le=60,
        description="Days before a patient's link expires when, if nothing was downloaded "
        "with it yet, the patient gets one reminder email in their language (once per "
        "link). 0: no reminders. Default 3.",
    )
    share_reminder_days_before: int = Field(
        default=3,
        ge=0,
        le=60,
        description="The same for a clinician's link shared by a patient: days before it "
        "expires when, if the clinician downloaded nothing yet, they get one reminder. "
        "0: no reminders to clinicians. Default 3.",
    )
    patient_extend_days: int = Field(
        default=14,
        ge=0,
        le=365,
        description="Days a patient may add to their own link, once, with 'Ask for more "
        "time' on the download page or the expired-link page. Asking again (or when 0, "
        "or once the request expired) alerts staff instead. 0: patients cannot extend "
        "their link themselves. Default 14.",
    )
    purge_grace_days: int = Field(
        default=7,
        ge=0,
        le=365,
        description="Days a package's files are kept after its link expired (or its "
        "request was cancelled), for staff to look into a complaint; nobody can download "
        "them meanwhile. Then they are deleted and the purge audited. 0: at the first "
        "sweep after expiry. Default 7.",
    )
    package_dir: Path | None = Field(
        default=None,
        description="Folder for built packages; relative paths are under node.data_dir. "
        "Empty: <data_dir>/packages. Default empty.",
    )
    preview_max_pixels: int = Field(
        default=50_000_000,
        ge=100_000,
        le=1_000_000_000,
        description="Values (Rows x Columns x SamplesPerPixel) of the one frame a series "
        "preview decodes, read from the header first; a larger frame gets no preview "
        "(a line in the manifest says so). Default 50000000.",
    )
    preview_memory_mb: int = Field(
        default=512,
        ge=128,
        le=16_384,
        description="Megabytes: the address space of the child process that decodes "
        "previews (interpreter included, about 150). Default 512.",
    )
    preview_timeout_s: float = Field(
        default=20.0,
        ge=0.5,
        le=600,
        description="Seconds of CPU and of wall clock one preview may take before its "
        "child process is killed (no preview for that series). Default 20.",
    )

    offline_viewer: bool = Field(
        default=True,
        description="Put the offline viewer in every package part and on every disc: "
        "VIEWER/index.html (INDEX.HTM at a disc's root) shows every image, pre-rendered, "
        "in any browser with nothing to install and no network. Default true.",
    )
    offline_viewer_max_side: int = Field(
        default=1024,
        ge=128,
        le=4096,
        description="Pixels: the longer side of the offline viewer's images (smaller "
        "images are not enlarged). Default 1024.",
    )
    offline_viewer_quality: int = Field(
        default=85,
        ge=30,
        le=95,
        description="JPEG quality (30-95) of the offline viewer's images; 85 is the "
        "renderer's own and the fastest (others are re-encoded). Default 85.",
    )
    reports: Literal["never", "with_images"] = Field(
        default="never",
        description="Radiology reports in the package: never, or with_images (the "
        "studies' final or corrected reports in REPORT/, never a preliminary; a "
        "correction after delivery becomes a new part and an email). A release rule's "
        "own reports: wins for its studies. Default never.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        try:
            DeliveryWindow.parse(v, "UTC")
        except WindowError as exc:
            raise ValueError(str(exc)) from None
        return v.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            return parse_zone(v).key
        except WindowError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("staff_email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        # Imported here: node.yaml is read by every `courier` command (node.cli).
        from email_validator import EmailNotValidError, validate_email

        try:
            # Syntax only: a DNS look-up at start-up would make the config check flaky.
            return validate_email(v.strip(), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(
                f"not a valid e-mail address ({exc}); expected name@example.org"
            ) from None

    @field_validator("package_dir")
    @classmethod
    def _folder(cls, v: Path | None) -> Path | None:
        if v is not None and str(v).strip() in ("", "."):
            raise ValueError("give a folder for packages, e.g. packages, or leave it empty")
        return v

    @model_validator(mode="after")
    def _retry_order(self) -> DeliverySettings:
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError(
                f"retry_cap_s ({self.retry_cap_s:g}) is below retry_base_s "
                f"({self.retry_base_s:g}); the cap must be at least the first wait"
            )
        return self

    def offline_viewer_options(self) -> ViewerOptions | None:
        """How packages and discs get their offline viewer (None: ``offline_viewer`` off);
        decoding under the ``preview_*`` limits."""
        if not self.offline_viewer:
            return None
        from delivery.packaging.viewer import ViewerOptions
        from imaging import RenderLimits

        limits = RenderLimits(
            self.preview_max_pixels, self.preview_memory_mb, self.preview_timeout_s
        )
        return ViewerOptions(self.offline_viewer_max_side, self.offline_viewer_quality, limits)

    def delivery_window(self) -> DeliveryWindow:
        """The validated ``window`` in ``timezone``."""
        return DeliveryWindow.parse(self.window, self.timezone)

    def packages_path(self, data_dir: Path) -> Path:
        """Where packages are built: ``package_dir`` resolved under ``data_dir``."""
        if self.package_dir is None:
            return data_dir / "packages"
        return data_dir / self.package_dir  # an absolute package_dir replaces data_dir

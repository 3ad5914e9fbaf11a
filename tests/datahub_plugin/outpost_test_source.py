"""A DataHub source whose run lasts as long as the test decides (issue 23).

Loaded by the real `datahub` CLI from the test venv as `type: outpost_test_source.HeldSource`
(scripts/setup-python.sh puts this directory on the venv's path). It emits `records` work units, says it holds,
then waits until `release_file` exists or `hold_seconds` have passed (whichever it was given), printing a line every
`tick_seconds`, and then ends like any source: the real CLI, the real process group, the real report; only the
length is the test's to choose.

`started_dir`, when given, receives one file per run (named by its pid) once the run holds, so a test can wait for
the Nth attempt to be under way. A run never released within `max_hold_seconds` fails, naming the file it waited
for, so a forgotten release shows as a failure instead of a hang.
"""

import logging
import os
import time
from typing import Iterable, Optional

from datahub.configuration.common import ConfigModel
from datahub.emitter.mce_builder import make_dataset_urn
from datahub.emitter.mcp import MetadataChangeProposalWrapper
from datahub.ingestion.api.common import PipelineContext
from datahub.ingestion.api.decorators import config_class, platform_name
from datahub.ingestion.api.source import Source, SourceReport
from datahub.ingestion.api.workunit import MetadataWorkUnit
from datahub.metadata.schema_classes import StatusClass

# Under `datahub.` so the CLI shows its lines as it shows its own (INFO and up, with timestamps).
logger = logging.getLogger("datahub.outpost_test_source")


class HeldSourceConfig(ConfigModel):
    records: int = 3
    release_file: Optional[str] = None
    hold_seconds: Optional[float] = None
    started_dir: Optional[str] = None
    tick_seconds: float = 0.5
    max_hold_seconds: float = 900.0


@platform_name("outpost-test")
@config_class(HeldSourceConfig)
class HeldSource(Source):
    def __init__(self, config: HeldSourceConfig, ctx: PipelineContext):
        super().__init__(ctx)
        self.config = config
        self.report = SourceReport()

    @classmethod
    def create(cls, config_dict: dict, ctx: PipelineContext) -> "HeldSource":
        return cls(HeldSourceConfig.model_validate(config_dict), ctx)

    def get_workunits_internal(self) -> Iterable[MetadataWorkUnit]:
        for i in range(self.config.records):
            urn = make_dataset_urn("outpost-test", f"held.record_{i}")
            yield MetadataChangeProposalWrapper(entityUrn=urn, aspect=StatusClass(removed=False)).as_workunit()
        self._hold()

    def _hold(self) -> None:
        config = self.config
        if config.release_file is None and config.hold_seconds is None:
            return
        if config.started_dir is not None:
            os.makedirs(config.started_dir, exist_ok=True)
            with open(os.path.join(config.started_dir, str(os.getpid())), "w") as marker:
                marker.write(f"{time.time()}\n")
        begun = time.monotonic()
        waiting_for = config.release_file or f"{config.hold_seconds} s"
        logger.info("outpost test source: holding until %s", waiting_for)
        ticks = 0
        while True:
            held = time.monotonic() - begun
            if config.release_file is not None and os.path.exists(config.release_file):
                break
            if config.hold_seconds is not None and held >= config.hold_seconds:
                break
            if held >= config.max_hold_seconds:
                raise RuntimeError(
                    f"outpost test source: not released within {config.max_hold_seconds} s "
                    f"(waited for {waiting_for})"
                )
            ticks += 1
            logger.info("outpost test source: still holding (tick %d)", ticks)
            time.sleep(config.tick_seconds)
        logger.info("outpost test source: released after %.1f s", time.monotonic() - begun)

    def get_report(self) -> SourceReport:
        return self.report

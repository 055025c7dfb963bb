"""The imaging farm: pymmcore-plus acquisition agents, the digital-twin microscope, frames streamed into the lake.

Imports `lake` only; the acquisition thread never waits on storage (see `LakeSink`).
"""

from acquisition._agent import AcquisitionError, Agent, RunResult
from acquisition._autofocus import AutofocusEngine, AutofocusResult, SoftwareAutofocus, find_focus
from acquisition._experiment import (
    ClaimVerdict,
    ExperimentConfig,
    ExperimentResult,
    PolicyRun,
    PolicySummary,
    run_policy_experiment,
)
from acquisition._farm import AgentSpec, PolicyName, make_policy, run_agent, run_farm
from acquisition._feed import EventFeed
from acquisition._feedback import FeedbackLoop
from acquisition._images_ingest import ImageIngest, ingest_images
from acquisition._microscope import Microscope, open_config, open_twin
from acquisition._mitosis import Detection, DetectionLike, detect_mitoses, nuclei_above_noise
from acquisition._objects import RunObjects, detect_objects, replace_objects
from acquisition._plan import check_stage_limits, default_plan, load_plan
from acquisition._policies import PolicyArm, PolicyFactory, SmartPolicy, default_policies
from acquisition._policy import (
    Action,
    ClassicalDetector,
    DetectorFactory,
    FeedbackPolicy,
    FrameView,
    MitosisDetector,
    MitosisPolicy,
    Revisit,
    SetExposure,
    SetLightPower,
    SkipPosition,
    Stop,
)
from acquisition._qc import FrameQC, frame_qc
from acquisition._remote import FeedbackClient, FeedbackClientFactory, FeedbackReply, RemotePolicy
from acquisition._sink import LakeSink, SinkStats

__all__ = [
    "AcquisitionError",
    "Action",
    "Agent",
    "AgentSpec",
    "AutofocusEngine",
    "AutofocusResult",
    "ClaimVerdict",
    "ClassicalDetector",
    "Detection",
    "DetectionLike",
    "DetectorFactory",
    "EventFeed",
    "ExperimentConfig",
    "ExperimentResult",
    "FeedbackClient",
    "FeedbackClientFactory",
    "FeedbackLoop",
    "FeedbackPolicy",
    "FeedbackReply",
    "FrameQC",
    "FrameView",
    "ImageIngest",
    "LakeSink",
    "Microscope",
    "MitosisDetector",
    "MitosisPolicy",
    "PolicyArm",
    "PolicyFactory",
    "PolicyName",
    "PolicyRun",
    "PolicySummary",
    "RemotePolicy",
    "Revisit",
    "RunObjects",
    "RunResult",
    "SetExposure",
    "SetLightPower",
    "SinkStats",
    "SkipPosition",
    "SmartPolicy",
    "SoftwareAutofocus",
    "Stop",
    "check_stage_limits",
    "default_plan",
    "default_policies",
    "detect_mitoses",
    "detect_objects",
    "find_focus",
    "frame_qc",
    "ingest_images",
    "load_plan",
    "make_policy",
    "nuclei_above_noise",
    "open_config",
    "open_twin",
    "replace_objects",
    "run_agent",
    "run_farm",
    "run_policy_experiment",
]

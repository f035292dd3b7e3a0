"""Training-data synthesis: InterSafe-V multi-turn dialogues, and DREAM's risk data.

`intersafe` writes multi-turn safety dialogues with an attacker and an expert; `mrd` lists and
verifies the risks of each (image, text) sample (DREAM step 1); `risk_sft` turns those risks
into replies that name them before declining or helping (DREAM step 2).
"""

from safeturn.synth.intersafe import Synthesizer, SynthSettings, SynthStats
from safeturn.synth.mrd import MRDFailure, MRDResult, MRDSettings, MRDSummary, RiskDisentangler
from safeturn.synth.risk_sft import RiskSFTBuilder, RiskSFTStats, TemplateWriter
from safeturn.synth.risks import Risk, RiskRecord, read_risk_records, write_risk_records

__all__ = [
    "MRDFailure",
    "MRDResult",
    "MRDSettings",
    "MRDSummary",
    "Risk",
    "RiskDisentangler",
    "RiskRecord",
    "RiskSFTBuilder",
    "RiskSFTStats",
    "SynthSettings",
    "SynthStats",
    "Synthesizer",
    "TemplateWriter",
    "read_risk_records",
    "write_risk_records",
]

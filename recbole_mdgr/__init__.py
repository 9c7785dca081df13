"""recbole-mdgr: generative recommendation with semantic IDs (MDGR, MADRec, TIGER) for RecBole."""

__version__ = "0.1.0"

"""Recipe schemas and loading."""

from .load import apply_overrides, dump_cfg, load_data_cfg, load_member_cfg, read_yaml
from .schema import DataCfg, MemberCfg

__all__ = ["DataCfg", "MemberCfg", "apply_overrides", "dump_cfg", "load_data_cfg", "load_member_cfg", "read_yaml"]

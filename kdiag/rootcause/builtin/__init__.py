"""The plugins that ship with kdiag. Their names are those the graphs in rootcause/ use."""

from kdiag.rootcause.builtin.config_references import check_config_references
from kdiag.rootcause.builtin.distribution import failure_distribution
from kdiag.rootcause.builtin.finalizers import finalizer_owner
from kdiag.rootcause.builtin.image_pull import classify_image_pull
from kdiag.rootcause.builtin.namespace_deletion import namespace_deletion_status
from kdiag.rootcause.builtin.node_conditions import check_node_conditions
from kdiag.rootcause.builtin.pull_secrets import check_pull_secrets
from kdiag.rootcause.builtin.rollout import owner_rollout_status
from kdiag.rootcause.builtin.scheduling import scheduling_reasons
from kdiag.rootcause.builtin.termination import termination_history

BUILTIN_PLUGINS = (
    classify_image_pull,
    check_pull_secrets,
    failure_distribution,
    check_node_conditions,
    termination_history,
    scheduling_reasons,
    owner_rollout_status,
    finalizer_owner,
    namespace_deletion_status,
    check_config_references,
)

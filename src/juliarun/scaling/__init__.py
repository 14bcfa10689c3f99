"""Pure scaling logic: metrics, policies, placement and the cluster planner."""

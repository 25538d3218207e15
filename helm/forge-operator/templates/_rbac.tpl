{{/* The grants on namespaced resources: a ClusterRole's rules when the operator watches every namespace,
a Role's in each watched namespace otherwise (watchNamespaces). tests/unit/test_chart_role_grants.py derives
them from the code, both ways: every grant is used and every use is granted. */}}
{{- define "forge.namespacedRules" -}}
# the three Forge kinds: Kopf watches them and patches finalizers/annotations (and the training
# handler its immutable-spec annotation); every reconcile reads its object anew (get)
- apiGroups: ["forge.ai"]
  resources: ["forgedatasets", "forgetrainingruns", "forgedeployments"]
  verbs: ["get", "list", "watch", "patch"]
# one status write per reconcile
- apiGroups: ["forge.ai"]
  resources: ["forgedatasets/status", "forgetrainingruns/status", "forgedeployments/status"]
  verbs: ["patch"]
# Jobs: read, server-side apply (create + patch), suspend/resume (patch), replaced on a spec change or a
# new attempt, or stopped when another preparation worker failed for good (delete)
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch", "delete"]
# the rest of a workload is only server-side applied (a PATCH that may create); the garbage collector
# removes it with its owner
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# serving: applied, then read for its ready replicas
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
# a new training attempt waits for the pods of earlier ones to finish; every workload's pods say why it
# does not run (PodsReady)
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# a failed container's last log lines (bounded, redacted) go into the resource's PodsReady condition
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Kopf posts Events about the resources
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

// The rules `katats policy gen` puts in front of the generated policy_data. They decide on the
// agent's requests as Kata's agent serialises them (input) and read the data model Kata's
// genpolicy writes (policy_data.containers[].OCI, storages, devices, sandbox_pidns,
// exec_commands; common, sandbox, request_defaults), with a few fields of our own per container:
//   name           the container's name (the sandbox container is the first, named "")
//   args_regex     anchored patterns for Args whose values are only known at run time
//   env_regex      anchored patterns for Env entries whose values are only known at run time
//   optional_mounts  destinations kubelet may leave out (hosts file, termination log, token)
// Each check collects what did not match into a named value and requires it to be empty, so a
// denial's explanation names the field and shows the offending entries, e.g.
//   allow_env: env_not_allowed == set() is false (env_not_allowed = {"MODE=debug"})
// Only `$(bundle-id)` (the container id) is filled in at evaluation; every other placeholder was
// resolved when the policy was generated. Written for this project (Rego v1).
export const RULES = String.raw`package agent_policy

import rego.v1

# Requests of every pod's life that reveal or change nothing the policy protects.
default DestroySandboxRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default OnlineCPUMemRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default SignalProcessRequest := true
default StartContainerRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default WaitProcessRequest := true

# Everything else is refused unless a rule below allows it.
default AddARPNeighborsRequest := false
default AddSwapPathRequest := false
default AddSwapRequest := false
default CloseStdinRequest := false
default CopyFileRequest := false
default CreateContainerRequest := false
default CreateSandboxRequest := false
default ExecProcessRequest := false
default GetDiagnosticDataRequest := false
default GetIPTablesRequest := false
default GetMetricsRequest := false
default ListInterfacesRequest := false
default ListRoutesRequest := false
default MemAgentCompactConfig := false
default MemAgentMemcgConfig := false
default MemHotplugByProbeRequest := false
default PauseContainerRequest := false
default ReadStreamRequest := false
default RemoveContainerRequest := false
default ReseedRandomDevRequest := false
default ResizeVolumeRequest := false
default ResumeContainerRequest := false
default SetGuestDateTimeRequest := false
default SetIPTablesRequest := false
default SetPolicyRequest := false
default StartTracingRequest := false
default StopTracingRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default VolumeStatsRequest := false
default WriteStreamRequest := false

# Never: a denial is a denial.
default AllowRequestsFailingPolicy := false

######################################################################
# CreateContainerRequest

CreateContainerRequest := {"allowed": true, "ops": ops} if {
	allow_create_container_input
	p := policy_container
	allow_container(p.container, input)
	ops := container_state_ops(p.index)
}

# Fields of the request no generated policy allows.
allow_create_container_input if {
	input.string_user == null
	count(input.shared_mounts) == 0
	input.OCI.Hooks == null
	input.OCI.Solaris == null
	input.OCI.Windows == null
}

# The sandbox (pause) container is the policy's first; the others are found by name.
policy_container := {"index": 0, "container": policy_data.containers[0]} if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "sandbox"
}

policy_container := {"index": i, "container": c} if {
	input.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
	container_name := input.OCI.Annotations["io.kubernetes.cri.container-name"]
	some i, c in policy_data.containers
	i > 0
	c.name == container_name
}

allow_container(p, i) if {
	i.OCI.Version == p.OCI.Version
	allow_root(p.OCI.Root, i.OCI.Root, i.container_id)
	allow_annotations(p, i.OCI.Annotations, i.container_id)
	allow_process(p, i.OCI.Process)
	allow_mounts(p, i.OCI.Mounts, i.container_id)
	allow_linux(p.OCI.Linux, i.OCI.Linux)
	i.sandbox_pidns == p.sandbox_pidns
	allow_storages(p.storages, i.storages, i.container_id)
	allow_devices(p.devices, i.devices)
}

# A policy pattern with the container id filled in (ids may hold dots).
with_bundle_id(pattern, container_id) := replace(pattern, "$(bundle-id)", replace(container_id, ".", "\\."))

allow_root(p_root, i_root, container_id) if {
	i_root.Readonly == p_root.Readonly
	root_path_regex := with_bundle_id(p_root.Path, container_id)
	regex.match(root_path_regex, i_root.Path)
}

allow_annotations(p, i_annotations, container_id) if {
	annotations_missing := {key | some key, _ in p.OCI.Annotations; not i_annotations[key]}
	annotations_missing == set()
	annotations_not_allowed := {sprintf("%s=%s", [key, value]) |
		some key, value in i_annotations
		not annotation_allowed(p, key, value, container_id)
	}
	annotations_not_allowed == set()
}

annotation_allowed(p, key, value, container_id) if {
	value_regex := with_bundle_id(p.OCI.Annotations[key], container_id)
	regex.match(value_regex, value)
}

annotation_allowed(p, key, value, _) if {
	not p.OCI.Annotations[key]
	some key_regex, value_regex in policy_data.runtime_anno_patterns
	regex.match(key_regex, key)
	regex.match(value_regex, value)
}

allow_process(p, i_process) if {
	p_process := p.OCI.Process
	i_process.Terminal == p_process.Terminal
	i_process.Cwd == p_process.Cwd
	i_process.NoNewPrivileges == p_process.NoNewPrivileges
	allow_user(p_process.User, i_process.User)
	allow_args(p, i_process.Args)
	allow_env(p, i_process.Env)
	allow_caps(p_process.Capabilities, i_process.Capabilities)
	i_process.ApparmorProfile == ""
	i_process.SelinuxLabel == ""
}

allow_user(p_user, i_user) if {
	i_user.UID == p_user.UID
	i_user.GID == p_user.GID
	additional_gids_not_allowed := {g | some g in i_user.AdditionalGids} - {g | some g in p_user.AdditionalGids}
	additional_gids_not_allowed == set()
	additional_gids_missing := {g | some g in p_user.AdditionalGids} - {g | some g in i_user.AdditionalGids}
	additional_gids_missing == set()
	i_user.Username == ""
}

# (The pattern form first: for the usual exact form, its failed guard is not what a denial shows.)
allow_args(p, i_args) if {
	p.args_regex
	count(i_args) == count(p.args_regex)
	args_not_allowed := [sprintf("%d:%s", [n, arg]) | some n, arg in i_args; not regex.match(p.args_regex[n], arg)]
	args_not_allowed == []
}

allow_args(p, i_args) if {
	not p.args_regex
	i_args == p.OCI.Process.Args
}

# Every variable the policy pins is set, and nothing else is, except what the cluster injects
# (service links) as request_defaults allow.
allow_env(p, i_env) if {
	env_missing := {v | some v in p.OCI.Process.Env; not v in i_env}
	env_missing == set()
	env_patterns_unmatched := {re | some re in p.env_regex; not env_matches(re, i_env)}
	env_patterns_unmatched == set()
	env_not_allowed := {v | some v in i_env; not env_allowed(p, v)}
	env_not_allowed == set()
}

env_matches(re, env) if {
	some v in env
	regex.match(re, v)
}

env_allowed(p, v) if v in p.OCI.Process.Env

env_allowed(p, v) if {
	some re in p.env_regex
	regex.match(re, v)
}

env_allowed(_, v) if {
	some re in policy_data.request_defaults.CreateContainerRequest.allow_env_regex
	regex.match(re, v)
}

cap_sets := ["Ambient", "Bounding", "Effective", "Inheritable", "Permitted"]

strip_cap(c) := substring(c, 4, -1) if startswith(c, "CAP_")

strip_cap(c) := c if not startswith(c, "CAP_")

caps_in(caps, set) := {strip_cap(c) | some c in caps[set]}

allow_caps(p_caps, i_caps) if {
	caps_not_allowed := {sprintf("%s:%s", [set, c]) |
		some set in cap_sets
		p_set := caps_in(p_caps, set)
		some c in caps_in(i_caps, set)
		not c in p_set
	}
	caps_not_allowed == set()
	caps_missing := {sprintf("%s:%s", [set, c]) |
		some set in cap_sets
		i_set := caps_in(i_caps, set)
		some c in caps_in(p_caps, set)
		not c in i_set
	}
	caps_missing == set()
}

# Mounts by destination, so each input mount is compared with the few policy mounts for its path.
mounts_by_destination(mounts) := {d: ms |
	some m in mounts
	d := m.destination
	ms := [x | some x in mounts; x.destination == d]
}

allow_mounts(p, i_mounts, container_id) if {
	p_mounts := mounts_by_destination(p.OCI.Mounts)
	i_by_destination := mounts_by_destination(i_mounts)
	mounts_not_allowed := [m | some m in i_mounts; not mount_in(p_mounts[m.destination], m, container_id)]
	mounts_not_allowed == []
	mounts_missing := [m.destination |
		some m in p.OCI.Mounts
		not m.destination in p.optional_mounts
		not mount_present(m, i_by_destination[m.destination], container_id)
	]
	mounts_missing == []

	# No destination mounted more often than the policy mounts it (a second mount would hide the first).
	mounts_repeated := [d | some d, ms in i_by_destination; count(ms) > count(p_mounts[d])]
	mounts_repeated == []
}

mount_in(p_mounts, i_mount, container_id) if {
	some p_mount in p_mounts
	mount_matches(p_mount, i_mount, container_id)
}

mount_present(p_mount, i_mounts, container_id) if {
	some i_mount in i_mounts
	mount_matches(p_mount, i_mount, container_id)
}

mount_matches(p_mount, i_mount, container_id) if {
	p_mount.type_ == i_mount.type_
	p_mount.options == i_mount.options
	source_matches(p_mount.source, i_mount.source, container_id)
}

# A source starting with ^ is a pattern (a path chosen when the container is created); else exact.
source_matches(p_source, i_source, container_id) if {
	startswith(p_source, "^")
	regex.match(with_bundle_id(p_source, container_id), i_source)
}

source_matches(p_source, i_source, _) if {
	not startswith(p_source, "^")
	p_source == i_source
}

allow_linux(p_linux, i_linux) if {
	i_namespaces := {{"Type": n.Type, "Path": n.Path} | some n in i_linux.Namespaces}
	p_namespaces := {{"Type": n.Type, "Path": n.Path} | some n in p_linux.Namespaces}
	namespaces_not_allowed := i_namespaces - p_namespaces
	namespaces_not_allowed == set()
	namespaces_missing := p_namespaces - i_namespaces
	namespaces_missing == set()

	masked_paths_missing := {x | some x in p_linux.MaskedPaths; not x in i_linux.MaskedPaths}
	masked_paths_missing == set()
	readonly_paths_missing := {x | some x in p_linux.ReadonlyPaths; not x in i_linux.ReadonlyPaths; not x in i_linux.MaskedPaths}
	readonly_paths_missing == set()

	devices_not_allowed := {d.Path | some d in i_linux.Devices; not d.Path in {x.Path | some x in p_linux.Devices}}
	devices_not_allowed == set()
	device_cgroup_allows := [r | some r in i_linux.Resources.Devices; r.Allow]
	device_cgroup_allows == []

	sysctls_not_allowed := {sprintf("%s=%s", [k, v]) | some k, v in i_linux.Sysctl; object.get(p_linux.Sysctl, k, null) != v}
	sysctls_not_allowed == set()

	count(i_linux.UIDMappings) == 0
	count(i_linux.GIDMappings) == 0
	i_linux.Seccomp == null
	i_linux.IntelRdt == null
	i_linux.RootfsPropagation == ""
	i_linux.MountLabel == ""
}

# The storages exactly as pinned. A container on verified layers has one blk storage per image
# layer, topmost first, then the overlay that assembles them: as many layers, each with a pinned
# root hash, in the pinned order, each at its mount point, every other field as pinned. Any other
# container has none.
allow_storages(p_storages, i_storages, container_id) if {
	i_layers := [layer_root_hash(s) | some s in i_storages; s.driver == "blk"]
	p_layers := [layer_root_hash(s) | some s in p_storages; s.driver == "blk"]
	layers_count := count(i_layers)
	layers_count == count(p_layers)
	layers_not_pinned := [h | some h in i_layers; not h in p_layers]
	layers_not_pinned == []
	layers_out_of_order := [sprintf("%d:%s", [n, h]) | some n, h in i_layers; h != p_layers[n]]
	layers_out_of_order == []
	storages_count := count(i_storages)
	storages_count == count(p_storages)
	storage_mount_points_not_allowed := [sprintf("%d:%s", [n, s.mount_point]) |
		some n, s in i_storages
		not source_matches(p_storages[n].mount_point, s.mount_point, container_id)
	]
	storage_mount_points_not_allowed == []
	storages_not_allowed := [s | some n, s in i_storages; not storage_matches(p_storages[n], s, container_id)]
	storages_not_allowed == []
}

# The root hash a layer storage names ("" for none; all of them, comma-separated, if several).
layer_root_hash(s) := concat(",", [substring(o, 35, -1) | some o in s.options; startswith(o, "io.katacontainers.fs-opt.root-hash=")])

storage_matches(p_s, i_s, container_id) if {
	p_s.driver == i_s.driver
	p_s.driver_options == i_s.driver_options
	p_s.fstype == i_s.fstype
	p_s.fs_group == i_s.fs_group
	p_s.shared == i_s.shared
	source_matches(p_s.source, i_s.source, container_id)
	count(p_s.options) == count(i_s.options)
	every n, o in i_s.options {
		storage_option_matches(p_s.options[n], o)
	}
}

# A policy option starting with ^ is a pattern (a host path the guest ignores); else exact.
storage_option_matches(p_o, i_o) if {
	startswith(p_o, "^")
	regex.match(p_o, i_o)
}

storage_option_matches(p_o, i_o) if {
	not startswith(p_o, "^")
	p_o == i_o
}

allow_devices(p_devices, i_devices) if {
	agent_devices_not_allowed := [d.container_path | some d in i_devices; not d.container_path in {x.container_path | some x in p_devices}]
	agent_devices_not_allowed == []
}

# The policy state remembers which policy container each container id is, and the pod's sandbox
# id, name and namespace as first seen: every later container must agree.
container_key(container_id) := concat("", ["container_", container_id])

container_state_ops(index) := ops if {
	annotations := input.OCI.Annotations
	sandbox_ops := state_set("sandbox_id", annotations["io.kubernetes.cri.sandbox-id"])
	name_ops := state_set("sandbox_name", annotations["io.kubernetes.cri.sandbox-name"])
	namespace_ops := state_set("namespace", annotations["io.kubernetes.cri.sandbox-namespace"])
	container_ops := state_set(container_key(input.container_id), index)
	ops := array.concat(array.concat(array.concat(sandbox_ops, name_ops), namespace_ops), container_ops)
}

state_set(key, value) := [] if data.pstate[key] == value

state_set(key, value) := [{"op": "add", "path": concat("/", ["/pstate", key]), "value": value}] if not key in object.keys(data.pstate)

######################################################################
# RemoveContainerRequest: forget the container.

RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": concat("/", ["/pstate", key])}]} if {
	key := container_key(input.container_id)
	key in object.keys(data.pstate)
}

RemoveContainerRequest := {"allowed": true, "ops": []} if {
	not container_key(input.container_id) in object.keys(data.pstate)
}

######################################################################
# ExecProcessRequest: only commands the pod's probes and hooks run, or that the manifest or
# settings allow, as the container's own user, in its directory, with its environment.

ExecProcessRequest if {
	input.string_user == null
	p := state_container
	allow_exec_command(p, input.process.Args)
	allow_exec_process(p, input.process)
}

state_container := policy_data.containers[data.pstate[container_key(input.container_id)]]

allow_exec_command(p, args) if args in p.exec_commands

allow_exec_command(_, args) if args in policy_data.request_defaults.ExecProcessRequest.allowed_commands

allow_exec_command(_, args) if {
	some re in policy_data.request_defaults.ExecProcessRequest.regex
	regex.match(re, concat(" ", args))
}

allow_exec_process(p, i_process) if {
	p_process := p.OCI.Process
	i_process.Cwd == p_process.Cwd
	i_process.NoNewPrivileges == p_process.NoNewPrivileges
	allow_user(p_process.User, i_process.User)
	exec_env_not_allowed := {v | some v in i_process.Env; not env_allowed(p, v); v != "TERM=xterm"}
	exec_env_not_allowed == set()
	allow_exec_caps(p_process.Capabilities, i_process.Capabilities)
	i_process.ApparmorProfile == ""
	i_process.SelinuxLabel == ""
}

allow_exec_caps(_, i_caps) if i_caps == null

allow_exec_caps(p_caps, i_caps) if {
	i_caps != null
	allow_caps(p_caps, i_caps)
}

######################################################################
# CreateSandboxRequest

CreateSandboxRequest if {
	input.guest_hook_path == ""
	count(input.kernel_modules) == 0
	input.sandbox_pidns == false
	sandbox_storages_not_allowed := [s | some s in input.storages; not s in policy_data.sandbox.storages]
	sandbox_storages_not_allowed == []
}

######################################################################
# Streams and diagnostics: as the settings or the manifest say.

ReadStreamRequest if policy_data.request_defaults.ReadStreamRequest == true

WriteStreamRequest if policy_data.request_defaults.WriteStreamRequest == true

CloseStdinRequest if policy_data.request_defaults.CloseStdinRequest == true

GetDiagnosticDataRequest if policy_data.request_defaults.GetDiagnosticDataRequest == true

UpdateEphemeralMountsRequest if policy_data.request_defaults.UpdateEphemeralMountsRequest == true

######################################################################
# CopyFileRequest: decided on the file's metadata (the agent never shows the bytes).

CopyFileRequest if {
	copy_path_allowed(input.path)
	input.file_type in {"Regular", "Directory"}
}

CopyFileRequest if {
	copy_path_allowed(input.path)
	input.file_type == "Symlink"
	not startswith(input.symlink_target, "/")
	no_dot_dot(input.symlink_target)
}

no_dot_dot(p) if not regex.match("(^|/)\\.\\.($|/)", p)

copy_path_allowed(path) if {
	no_dot_dot(path)
	some re in policy_data.request_defaults.CopyFileRequest
	regex.match(re, path)
}

######################################################################
# Network requests: never for the loopback, never with flags or states beyond the settings'.

UpdateInterfaceRequest if {
	defaults := policy_data.request_defaults.UpdateInterfaceRequest
	bits.and(input.interface.raw_flags, bits.negate(defaults.allow_raw_flags)) == 0
	not input.interface.name in defaults.forbidden_names
	not input.interface.hwAddr in defaults.forbidden_hw_addrs
}

UpdateRoutesRequest if {
	defaults := policy_data.request_defaults.UpdateRoutesRequest
	routes_not_allowed := [r |
		some r in input.routes.Routes
		route_forbidden(defaults, r)
	]
	routes_not_allowed == []
}

route_forbidden(defaults, r) if r.device in defaults.forbidden_device_names

route_forbidden(defaults, r) if {
	some re in defaults.forbidden_source_regex
	regex.match(re, r.source)
}

AddARPNeighborsRequest if {
	defaults := policy_data.request_defaults.AddARPNeighborsRequest
	neighbors_not_allowed := [n |
		some n in input.neighbors.ARPNeighbors
		not neighbor_allowed(defaults, n)
	]
	neighbors_not_allowed == []
}

neighbor_allowed(defaults, n) if {
	not n.device in defaults.forbidden_device_names
	n.toIPAddress.mask == ""
	not neighbor_address_forbidden(defaults, n.toIPAddress.address)
	n.state in defaults.allowed_states
	bits.or(n.flags, 136) == 136
}

neighbor_address_forbidden(defaults, address) if {
	some re in defaults.forbidden_cidrs_regex
	regex.match(re, address)
}
`;

package bpf

// Slot numbers and sizes of the programs' maps and records (enum
// bridle_limits in include/bridle.h).
const (
	// BaselineSlot is the task slot of the rules of workloads without a
	// task (BRIDLE_BASELINE_SLOT).
	BaselineSlot = 0
	// MaxSlots is how many task slots the maps hold, the baseline's
	// included (BRIDLE_MAX_SLOTS).
	MaxSlots = 4096
	// MaxPortRanges is how many port ranges one rule entry holds
	// (BRIDLE_MAX_PORT_RANGES).
	MaxPortRanges = 16
	// UnixPathMax is the size of a unix socket rule's name, as of
	// sun_path (BRIDLE_UNIX_PATH_MAX).
	UnixPathMax = 108
	// EventPathMax is the size of an event's path (BRIDLE_EVENT_PATH_MAX).
	EventPathMax = 128
	// MaxCgroupDepth is how many cgroup levels, 0 to MaxCgroupDepth-1,
	// the programs search for a process's workload
	// (BRIDLE_MAX_CGROUP_DEPTH).
	MaxCgroupDepth = 16
)

/// Where this graceful runs inside a Slurm allocation, from the variables Slurm sets: under
/// `srun --ntasks-per-node=1 graceful run ...`, one graceful per node, each knowing the node count,
/// its own node's rank and the hosts (the first is the leader's).
///
/// Inside a step (srun) the step's values win: a step may use fewer nodes than the job has, and
/// there `SLURM_NNODES` and `SLURM_STEP_NODELIST` are the step's while `SLURM_JOB_NUM_NODES` and
/// `SLURM_JOB_NODELIST` (and `SLURM_NODELIST`) stay the job's. A batch script or salloc shell, outside
/// any step, has only the job's.
struct SlurmAllocation: Equatable, Sendable {
    var jobID: String
    var nodeCount: Int
    var nodeRank: Int
    var hosts: [String]

    var leaderHost: String { hosts[0] }

    struct Error: Swift.Error, Equatable, CustomStringConvertible, Sendable {
        let description: String
    }

    /// The allocation, or nil outside Slurm (no `SLURM_JOB_ID`).
    static func from(environment: [String: String]) throws(Error) -> SlurmAllocation? {
        guard let jobID = environment["SLURM_JOB_ID"] else { return nil }
        guard isNumber(jobID) else { throw Error(description: "SLURM_JOB_ID=\(SlurmHostList.quoted(jobID)) is not a job number") }
        let countVariable = ["SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"].first { environment[$0] != nil }
        guard let countVariable else { throw Error(description: "SLURM_NNODES is not set (nor SLURM_JOB_NUM_NODES)") }
        let nodeCount = try number(countVariable, in: environment)
        guard nodeCount >= 1 else { throw Error(description: "\(countVariable)=0: no node") }
        let nodeRank: Int
        if environment["SLURM_NODEID"] != nil {
            nodeRank = try number("SLURM_NODEID", in: environment)
        } else if nodeCount == 1 {
            // A salloc shell sets no SLURM_NODEID; with one node there is no doubt.
            nodeRank = 0
        } else {
            throw Error(description: "SLURM_NODEID is not set in a \(nodeCount)-node allocation: start graceful with srun --ntasks-per-node=1")
        }
        guard nodeRank < nodeCount else {
            throw Error(description: "SLURM_NODEID=\(nodeRank) is not below \(countVariable)=\(nodeCount)")
        }
        let listVariable = environment["SLURM_STEP_NODELIST"] != nil ? "SLURM_STEP_NODELIST" : "SLURM_JOB_NODELIST"
        guard let list = environment[listVariable] else { throw Error(description: "SLURM_JOB_NODELIST is not set") }
        let hosts: [String]
        do {
            hosts = try SlurmHostList.expand(list)
        } catch {
            throw Error(description: "\(listVariable): \(error.description)")
        }
        guard hosts.count == nodeCount else {
            throw Error(description: "\(listVariable)=\(SlurmHostList.quoted(list)) names \(hosts.count) hosts but \(countVariable)=\(nodeCount)")
        }
        return SlurmAllocation(jobID: jobID, nodeCount: nodeCount, nodeRank: nodeRank, hosts: hosts)
    }

    /// The usual launch mistakes, as one line, or nil: graceful must run once per node, in a step.
    /// More than one task per node starts several gracefuls on one node, each believing it is the
    /// node; graceful in a multi-node batch script (without srun) is one node's graceful waiting for
    /// peers that never start.
    static func launchProblem(environment: [String: String]) -> String? {
        guard environment["SLURM_JOB_ID"] != nil else { return nil }
        let fix = "run graceful once per node: srun --ntasks-per-node=1 graceful run ..."
        if let local = environment["SLURM_LOCALID"], let id = Int(local), id > 0 {
            return "this is task \(id + 1) on its node (SLURM_LOCALID=\(id)): \(fix)"
        }
        guard environment["SLURM_STEP_ID"] != nil else {
            let nodes = (environment["SLURM_NNODES"] ?? environment["SLURM_JOB_NUM_NODES"]).flatMap { Int($0) } ?? 1
            guard nodes > 1 else { return nil }
            return "graceful runs in the job's batch script or salloc shell, not under srun, so only one of its \(nodes) nodes would join: \(fix)"
        }
        // In a step, SLURM_NTASKS_PER_NODE may be the batch job's, inherited: the step's own
        // layout is SLURM_STEP_TASKS_PER_NODE (`2(x3),1`).
        if let layout = environment["SLURM_STEP_TASKS_PER_NODE"] {
            let most = layout.split(separator: ",").compactMap { Int($0.prefix { $0 != "(" }) }.max() ?? 1
            return most > 1 ? "the step starts \(most) tasks on a node (SLURM_STEP_TASKS_PER_NODE=\(layout)): \(fix)" : nil
        }
        if let perNode = environment["SLURM_NTASKS_PER_NODE"].flatMap({ Int($0) }), perNode > 1 {
            return "the step starts \(perNode) tasks per node (SLURM_NTASKS_PER_NODE=\(perNode)): \(fix)"
        }
        return nil
    }

    private static func isNumber(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 18 && text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    private static func number(_ variable: String, in environment: [String: String]) throws(Error) -> Int {
        let text = environment[variable] ?? ""
        guard isNumber(text), let value = Int(text) else {
            throw Error(description: "\(variable)=\(SlurmHostList.quoted(text)) is not a number")
        }
        return value
    }
}

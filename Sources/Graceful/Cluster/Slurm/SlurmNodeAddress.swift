import Glibc

/// The address at which Slurm reaches a node. A node's name (`NodeName`, what the step's node list
/// holds) need not be a host name: slurm.conf may give the node a `NodeAddr` (an address, or another
/// name) that Slurm itself uses. Followers must reach the leader's node the same way.
enum SlurmNodeAddress {
    /// Whether `host` resolves here (getaddrinfo): then it is used as it is.
    static func resolves(_ host: String) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &found) == 0 else { return false }
        freeaddrinfo(found)
        return true
    }

    /// The `NodeAddr` of node `name` from `scontrol show node -o NAME` run in `environment` (this
    /// process's when nil); nil when scontrol is missing, fails, or says nothing usable.
    static func read(node name: String, environment: [String: String]? = nil) -> String? {
        let path = environment.map { $0["PATH"] } ?? getenv("PATH").map { String(cString: $0) }
        guard let scontrol = try? ExecutableLookup.resolve("scontrol", path: path),
              let output = SlurmKillWait.run(scontrol, ["show", "node", "-o", name], environment: environment)
        else { return nil }
        return parse(node: output)
    }

    /// The value of `NodeAddr=` in `scontrol show node -o` output (one line of `Key=Value` fields).
    static func parse(node: String) -> String? {
        let field = node.split(whereSeparator: { $0 == " " || $0 == "\n" }).first { $0.hasPrefix("NodeAddr=") }
        guard let value = field?.dropFirst("NodeAddr=".count), !value.isEmpty, value != "(null)" else { return nil }
        return String(value)
    }
}

/// Signal numbers the coordinator's decisions mention, as Linux defines them; the core imports no
/// system module.
public enum SignalNumber {
    public static let hangup: Int32 = 1
    public static let interrupt: Int32 = 2
    public static let kill: Int32 = 9
    public static let user1: Int32 = 10
    public static let terminate: Int32 = 15

    /// "SIGINT" for 2, "signal 42" for one without a name here.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case hangup: return "SIGHUP"
        case interrupt: return "SIGINT"
        case 3: return "SIGQUIT"
        case 4: return "SIGILL"
        case 6: return "SIGABRT"
        case 7: return "SIGBUS"
        case 8: return "SIGFPE"
        case kill: return "SIGKILL"
        case user1: return "SIGUSR1"
        case 11: return "SIGSEGV"
        case 12: return "SIGUSR2"
        case 13: return "SIGPIPE"
        case 14: return "SIGALRM"
        case terminate: return "SIGTERM"
        default: return "signal \(signal)"
        }
    }
}

/// What asked for a stop.
public enum Trigger: Equatable, Sendable, CustomStringConvertible {
    /// SIGINT, SIGTERM, SIGUSR1 or SIGHUP reached the coordinator.
    case signal(Int32)
    /// The control file's flag became 1.
    case controlFile

    /// The name used on the wire, in the commit record and on the console.
    public var description: String {
        switch self {
        case .signal(let number): return SignalNumber.name(number)
        case .controlFile: return "control-file"
        }
    }
}

/// How a rank process ended.
public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var isSuccess: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let signal): return "killed by \(SignalNumber.name(signal))"
        }
    }
}

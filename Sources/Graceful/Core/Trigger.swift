/// Signal numbers the coordinator's decisions mention, as Linux defines them; the core imports no
/// system module.
public enum SignalNumber {
    public static let hangup: Int32 = 1
    public static let interrupt: Int32 = 2
    public static let quit: Int32 = 3
    public static let abort: Int32 = 6
    public static let kill: Int32 = 9
    public static let user1: Int32 = 10
    public static let terminate: Int32 = 15

    /// "SIGINT" for 2, "signal 42" for one without a name here.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case hangup: return "SIGHUP"
        case interrupt: return "SIGINT"
        case quit: return "SIGQUIT"
        case 4: return "SIGILL"
        case abort: return "SIGABRT"
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
    /// SIGINT, SIGTERM, SIGUSR1 or SIGHUP reached the coordinator: a graceful stop.
    case signal(Int32)
    /// SIGQUIT or SIGABRT reached the coordinator: quit now (a stop whose ranks get SIGTERM at once).
    case quit(Int32)
    /// The control file's flag became 1.
    case controlFile

    /// The signal, for the debounce and the exit code 128+N; nil for the control file.
    public var signalNumber: Int32? {
        switch self {
        case .signal(let number), .quit(let number): return number
        case .controlFile: return nil
        }
    }

    /// The name used on the wire, in the commit record and on the console.
    public var description: String {
        signalNumber.map(SignalNumber.name) ?? "control-file"
    }
}

/// How a rank process ended.
public enum ExitStatus: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)

    public var isSuccess: Bool { self == .exited(0) }
}

/// The meaning of the control file's bytes, read the way MindSpore's OnRequestExit reads it:
/// `json.load(f)["GracefulExit"] == 1`, with every other key ignored.
public enum ControlFileState: Equatable, Sendable {
    /// The flag is set: 1, 1.0 or true.
    case requestsExit
    /// A valid object whose flag is another number or false, or absent (other tools' keys may share
    /// the file).
    case clear
    /// Unusable content, or a flag of another type ("1", null, a list); never a request. The text says
    /// what is wrong, for one warning.
    case invalid(String)

    /// The key MindSpore's OnRequestExit reads.
    public static let key = "GracefulExit"

    public init(contents: some Collection<UInt8>) {
        let value: JSONValue
        do {
            value = try JSONParser.parse(contents)
        } catch {
            self = contents.isEmpty ? .invalid("the file is empty") : .invalid("invalid JSON: \(error)")
            return
        }
        guard case .object = value else {
            self = .invalid("the top level is not a JSON object")
            return
        }
        guard let flag = value[Self.key] else {
            self = .clear
            return
        }
        switch flag {
        case .bool, .int, .double:
            self = flag.equalsOneLikePython ? .requestsExit : .clear
        case .string: self = .invalid("\"\(Self.key)\" is a string; only 1, 1.0 or true request an exit")
        case .null: self = .invalid("\"\(Self.key)\" is null; only 1, 1.0 or true request an exit")
        case .array: self = .invalid("\"\(Self.key)\" is a list; only 1, 1.0 or true request an exit")
        case .object: self = .invalid("\"\(Self.key)\" is an object; only 1, 1.0 or true request an exit")
        }
    }
}

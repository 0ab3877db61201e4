/// The meaning of the control file's bytes, read the way MindSpore's OnRequestExit reads it:
/// `json.load(f)["GracefulExit"] == 1`, with every other key ignored.
public enum ControlFileState: Equatable, Sendable {
    /// The flag is set: 1, 1.0 or true.
    case requestsExit
    /// A valid object whose flag is another number or false, or absent (other tools' keys may share
    /// the file).
    case clear
    /// Unusable content, or a flag of another type ("1", null, a list); never a request.
    case invalid(ControlFileProblem)

    /// The key MindSpore's OnRequestExit reads.
    public static let key = "GracefulExit"

    public init(contents: some Collection<UInt8>) {
        let value: JSONValue
        do {
            value = try JSONParser.parse(contents)
        } catch {
            self = .invalid(contents.isEmpty ? .empty : .invalidJSON(error))
            return
        }
        guard case .object = value else {
            self = .invalid(.notAnObject)
            return
        }
        guard let flag = value[Self.key] else {
            self = .clear
            return
        }
        switch flag {
        case .bool, .int, .double: self = flag.equalsOneLikePython ? .requestsExit : .clear
        case .string, .illFormedString: self = .invalid(.flagOfWrongType(.string))
        case .null: self = .invalid(.flagOfWrongType(.null))
        case .array: self = .invalid(.flagOfWrongType(.list))
        case .object: self = .invalid(.flagOfWrongType(.object))
        }
    }
}

/// What is wrong with a control file's content.
public enum ControlFileProblem: Equatable, Sendable, CustomStringConvertible {
    case empty
    case invalidJSON(JSONParseError)
    case notAnObject
    case flagOfWrongType(FlagType)

    /// A type the flag may not have.
    public enum FlagType: Equatable, Sendable {
        case string, null, list, object
    }

    /// Problems of one kind are reported once, however their details change: a file written a byte
    /// at a time is invalid JSON at a different offset after every byte.
    public enum Kind: Hashable, Sendable {
        case invalidJSON, notAnObject, flagOfWrongType
    }

    public var kind: Kind {
        switch self {
        case .empty, .invalidJSON: return .invalidJSON
        case .notAnObject: return .notAnObject
        case .flagOfWrongType: return .flagOfWrongType
        }
    }

    public var description: String {
        switch self {
        case .empty: return "the file is empty"
        case .invalidJSON(let error): return "invalid JSON: \(error)"
        case .notAnObject: return "the top level is not a JSON object"
        case .flagOfWrongType(let type):
            return "\"\(ControlFileState.key)\" is \(type); only 1, 1.0 or true request an exit"
        }
    }
}

extension ControlFileProblem.FlagType: CustomStringConvertible {
    public var description: String {
        switch self {
        case .string: return "a string"
        case .null: return "null"
        case .list: return "a list"
        case .object: return "an object"
        }
    }
}

extension ControlFileState {
    /// `contents` with the flag's value replaced by `0` and every other byte as it was (numbers other
    /// tools wrote, key order, spacing), when the flag requests an exit; nil otherwise.
    public static func cleared(_ contents: some Collection<UInt8>) -> [UInt8]? {
        guard ControlFileState(contents: contents) == .requestsExit,
              let range = try? JSONParser.rangeOfTopLevelValue(forKey: key, in: contents)
        else { return nil }
        var bytes = Array(contents)
        bytes.replaceSubrange(range, with: [UInt8(ascii: "0")])
        return bytes
    }
}

import GracefulProtocol

/// What a queue holds: the command template and its tasks, each a set of named parameters. Written
/// once, as `<queue>/queue.json`, by the first `queue run`; every later one must agree with it.
public struct QueueDefinition: Equatable, Sendable {
    public struct Task: Equatable, Sendable {
        /// `task-000`, `task-001`, ...: the order of the grid or of the tasks file.
        public let id: String
        /// The parameters, by name; a grid's values are strings, a tasks file's any JSON.
        public let params: [String: JSONValue]
    }

    /// The command every attempt runs, `{name}` still in it.
    public let command: [String]
    public let tasks: [Task]

    /// Why a definition cannot be built or read.
    public struct Problem: Error, Equatable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public init(command: [String], parameterSets: [[String: JSONValue]]) throws(Problem) {
        guard !parameterSets.isEmpty else { throw Problem(message: "the queue would have no task") }
        let width = max(3, String(parameterSets.count - 1).count)
        tasks = parameterSets.enumerated().map { index, params in
            let number = String(index)
            return Task(id: "task-" + String(repeating: "0", count: width - number.count) + number, params: params)
        }
        self.command = command
        for task in tasks {
            _ = try Self.substitute(command, params: task.params, taskID: task.id)
        }
    }

    /// The parameter sets of `--grid name=v1,v2 ...`: every combination, the last grid varying fastest.
    public static func grid(_ specifications: [String]) throws(Problem) -> [[String: JSONValue]] {
        var sets: [[String: JSONValue]] = [[:]]
        var seen: Set<String> = []
        for specification in specifications {
            guard let equals = specification.firstIndex(of: "=") else {
                throw Problem(message: "--grid '\(specification)' is not NAME=VALUE,VALUE,...")
            }
            let name = String(specification[..<equals])
            let values = specification[specification.index(after: equals)...].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard isParameterName(name) else {
                throw Problem(message: "--grid '\(specification)': '\(name)' is not a parameter name (letters, digits, '_', '-', '.')")
            }
            guard !seen.contains(name) else { throw Problem(message: "--grid names '\(name)' twice") }
            guard !values.contains(where: \.isEmpty) else {
                throw Problem(message: "--grid '\(specification)' has an empty value")
            }
            guard Set(values).count == values.count else {
                throw Problem(message: "--grid '\(specification)' lists a value twice")
            }
            seen.insert(name)
            sets = sets.flatMap { set in values.map { value in set.merging([name: .string(value)]) { $1 } } }
        }
        return sets
    }

    /// The parameter sets of a tasks file: one JSON object per line (blank lines skipped).
    public static func tasksFile(_ contents: [UInt8], name: String) throws(Problem) -> [[String: JSONValue]] {
        var sets: [[String: JSONValue]] = []
        for (index, line) in contents.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }) { continue }
            let value: JSONValue
            do {
                value = try JSONParser.parse(line)
            } catch {
                throw Problem(message: "\(name), line \(index + 1): \(error)")
            }
            guard case .object(let params) = value else {
                throw Problem(message: "\(name), line \(index + 1): not a JSON object of parameters")
            }
            if let bad = params.keys.sorted().first(where: { !isParameterName($0) }) {
                throw Problem(message: "\(name), line \(index + 1): '\(bad)' is not a parameter name (letters, digits, '_', '-', '.')")
            }
            sets.append(params)
        }
        return sets
    }

    static func isParameterName(_ name: String) -> Bool {
        !name.isEmpty && name.unicodeScalars.allSatisfy { scalar in
            (scalar.properties.isAlphabetic && scalar.isASCII) || ("0"..."9").contains(scalar) || "_-.".unicodeScalars.contains(scalar)
        }
    }

    /// `command` with each `{name}` replaced by the parameter's value (a string as it is, anything
    /// else as its JSON); `{{` and `}}` stand for braces.
    public static func substitute(_ command: [String], params: [String: JSONValue], taskID: String) throws(Problem) -> [String] {
        var result: [String] = []
        for argument in command {
            var out = ""
            var index = argument.startIndex
            while index < argument.endIndex {
                let character = argument[index]
                let next = argument.index(after: index)
                if character == "{", next < argument.endIndex, argument[next] == "{" {
                    out.append("{")
                    index = argument.index(after: next)
                } else if character == "}", next < argument.endIndex, argument[next] == "}" {
                    out.append("}")
                    index = argument.index(after: next)
                } else if character == "{", let close = argument[next...].firstIndex(of: "}") {
                    let name = String(argument[next..<close])
                    guard let value = params[name] else {
                        let known = params.keys.sorted().joined(separator: ", ")
                        throw Problem(message: "the command's '{\(name)}' is no parameter of \(taskID) (it has: \(known.isEmpty ? "none" : known))")
                    }
                    out += value.stringValue ?? JSONWriting.encode(value)
                    index = argument.index(after: close)
                } else {
                    out.append(character)
                    index = next
                }
            }
            result.append(out)
        }
        return result
    }

    // MARK: - queue.json

    /// The file's text: canonical (keys sorted), so two definitions are equal exactly when their
    /// files are.
    public var encoded: String {
        let command = self.command.map(JSONEncoding.quoted).joined(separator: ", ")
        let tasks = self.tasks.map { "    {\"id\": \(JSONEncoding.quoted($0.id)), \"params\": \(JSONWriting.encode(.object($0.params)))}" }
        return "{\"version\": 1, \"command\": [\(command)], \"tasks\": [\n\(tasks.joined(separator: ",\n"))\n]}\n"
    }

    public static func decode(_ contents: [UInt8]) throws(Problem) -> QueueDefinition {
        let value: JSONValue
        do {
            value = try JSONParser.parse(contents)
        } catch {
            throw Problem(message: "queue.json is not JSON (\(error))")
        }
        guard value["version"]?.intValue == 1, case .array(let commandValues)? = value["command"],
              case .array(let taskValues)? = value["tasks"]
        else { throw Problem(message: "queue.json is not a queue definition of version 1") }
        let command = commandValues.compactMap(\.stringValue)
        guard command.count == commandValues.count else { throw Problem(message: "queue.json: the command is not a list of strings") }
        var tasks: [Task] = []
        var ids: Set<String> = []
        for taskValue in taskValues {
            guard let id = taskValue["id"]?.stringValue, isTaskID(id), !ids.contains(id),
                  case .object(let params)? = taskValue["params"]
            else { throw Problem(message: "queue.json: a task without a valid, unique id and params") }
            ids.insert(id)
            tasks.append(Task(id: id, params: params))
        }
        guard !tasks.isEmpty else { throw Problem(message: "queue.json lists no task") }
        return QueueDefinition(command: command, tasks: tasks)
    }

    private init(command: [String], tasks: [Task]) {
        self.command = command
        self.tasks = tasks
    }

    /// An id is a file name in the queue: nothing that could leave its directory.
    static func isTaskID(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 128 && !id.hasPrefix(".") && id.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "_-.".unicodeScalars.contains(scalar))
        }
    }
}

import Glibc
import GracefulProtocol

/// `graceful queue status`: every task's state, as a table or as JSON.
enum QueueStatus {
    struct Row: Equatable {
        var id: String
        var params: JSONValue
        /// pending, running, finished or failed.
        var state: String
        var attempts: Int
        var result: JSONValue
        var exit: JSONValue
        /// Why a failed task failed (its outcome's `reason`).
        var reason: String?
        var worker: String?
        var host: String?
        var elapsed: Int?
    }

    /// The rows of the queue at `directory` now.
    static func rows(of queue: QueueDirectory, now: Int) throws(QueueDirectory.Failure) -> [Row] {
        var rows: [Row] = []
        for task in queue.definition.tasks {
            let files = try queue.scan(task.id)
            var row = Row(id: task.id, params: .object(task.params), state: "pending", attempts: files.claims.count,
                          result: .null, exit: .null)
            if files.outcome != nil {
                let outcome = try queue.readOutcome(task.id)
                switch outcome.state {
                case .finished(let attempt):
                    row.state = "finished"
                    row.attempts = attempt
                case .failed(let attempts):
                    row.state = "failed"
                    row.attempts = attempts
                }
                row.result = outcome.value["result"] ?? .null
                row.exit = outcome.value["exit"] ?? .null
                row.reason = outcome.value["reason"]?.stringValue
            } else if let latest = files.latest {
                if latest.end == nil {
                    row.state = "running"
                    let details = queue.claimDetails(task.id, attempt: latest.attempt)
                    row.worker = latest.holder
                    row.host = latest.host
                    row.elapsed = details?["claimed_epoch"]?.intValue.map { max(0, now - $0) }
                } else if case .failed(let exit)? = latest.end {
                    row.exit = exit.map { .int(Int($0)) } ?? .null
                }
            }
            rows.append(row)
        }
        return rows
    }

    static func json(_ rows: [Row]) -> String {
        let tasks = rows.map { row in
            "{\"id\": \(JSONEncoding.quoted(row.id)), \"params\": \(JSONWriting.encode(row.params)), \"state\": \"\(row.state)\", \"attempts\": \(row.attempts), \"result\": \(JSONWriting.encode(row.result)), \"exit\": \(JSONWriting.encode(row.exit)), \"reason\": \(JSONEncoding.string(row.reason)), \"worker\": \(JSONEncoding.string(row.worker)), \"host\": \(JSONEncoding.string(row.host)), \"elapsed\": \(JSONEncoding.number(row.elapsed))}"
        }
        return "{\"tasks\": [\n" + tasks.map { "  " + $0 }.joined(separator: ",\n") + "\n]}\n"
    }

    static func table(_ rows: [Row], directory: String) -> String {
        let counts = ["pending", "running", "finished", "failed"].map { state in "\(rows.filter { $0.state == state }.count) \(state)" }
        var lines = ["queue \(directory): \(rows.count) tasks: \(counts.joined(separator: ", "))"]
        let header = ["TASK", "STATE", "ATTEMPTS", "WORKER", "ELAPSED", "EXIT", "PARAMS", "RESULT", "REASON"]
        let cells = rows.map { row in
            [row.id, row.state, String(row.attempts), row.worker ?? "", row.elapsed.map { "\($0)s" } ?? "",
             row.exit == .null ? "" : JSONWriting.encode(row.exit), JSONWriting.encode(row.params),
             row.result == .null ? "" : String(JSONWriting.encode(row.result).prefix(60)), row.reason ?? ""]
        }
        let widths = header.indices.map { column in ([header] + cells).map { $0[column].count }.max()! }
        for line in [header] + cells {
            let padded = line.enumerated().map { column, cell in
                column == line.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }
            var text = padded.joined(separator: "  ")
            while text.hasSuffix(" ") { text.removeLast() }
            lines.append(text)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

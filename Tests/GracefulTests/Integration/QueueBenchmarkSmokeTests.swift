import Foundation
import Testing

/// `graceful-bench --only queue --quick` runs to the end and writes every figure of
/// docs/BENCHMARKS.md's "Queue". A smoke test only: it checks that the benchmark works (every queue
/// run ended as expected, nothing left behind), never how fast anything is.
@Suite struct QueueBenchmarkSmokeTests {
    @Test func quickQueueRunWritesEveryFigure() throws {
        let directory = try TemporaryDirectory()
        let json = directory.file("bench.json")
        let run = try Launched([BenchmarkSmokeTests.bench, "--only", "queue", "--quick", "--json", json], in: directory.path)
        #expect(try run.waitForExit(timeout: 300) == 0, "\(run.output)")
        let data = try #require(FileManager.default.contents(atPath: json), "no JSON written\n\(run.output)")
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let queue = try #require(report["queue"] as? [String: Any], "no queue figures\n\(run.output)")
        #expect(queue["goal_tasks_per_s"] as? Double == 100)
        let throughput = queue["throughput"] as? [[String: Any]] ?? []
        #expect(throughput.compactMap { $0["workers"] as? Int } == [1, 8])
        for entry in throughput {
            for key in ["tasks", "wall_s", "tasks_per_s", "cpu_s", "cpu_ms_per_task", "cpu_bound_tasks_per_s"] {
                #expect((entry[key] as? Double).map { $0 > 0 } == true, "throughput \(key): \(String(describing: entry[key]))")
            }
            #expect(entry["exit_code"] as? Int == 0)
        }
        for key in ["claim_us", "outcome_us"] {
            let summary = queue[key] as? [String: Any] ?? [:]
            for figure in ["samples", "p50", "p99", "max"] {
                #expect((summary[figure] as? Double).map { $0 > 0 } == true, "\(key) \(figure): \(String(describing: summary[figure]))")
            }
        }
        let idle = queue["idle"] as? [[String: Any]] ?? []
        #expect(idle.compactMap { $0["lease_s"] as? Double } == [30, 3])
        for entry in idle {
            for key in ["heartbeat_s", "seconds", "cpu_ms", "cpu_percent"] {
                #expect(entry[key] as? Double != nil, "idle \(key): \(String(describing: entry[key]))")
            }
            #expect(entry["exit_code"] as? Int == 143)
        }
        let clean = report["clean"] as? [String: Any] ?? [:]
        #expect(clean["leftover_processes"] as? Int == 0)
        #expect(run.stdout.contains("queue: trivial tasks (/bin/true) through one host"), "\(run.stdout)")
    }
}

// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "graceful",
    products: [
        .executable(name: "graceful", targets: ["graceful"]),
        .library(name: "Graceful", targets: ["Graceful"]),
        .library(name: "GracefulRank", targets: ["GracefulRank"]),
    ],
    targets: [
        // System calls Glibc does not export to Swift, and the code that must run between fork and exec.
        .target(name: "CGraceful"),
        // The wire format shared by the coordinator and the Swift client: JSON values and protocol messages.
        .target(name: "GracefulProtocol", linkerSettings: [.linkedLibrary("m")]),
        // The coordinator: the pure stop/commit state machine and the thin process layer around it.
        .target(name: "Graceful", dependencies: ["CGraceful", "GracefulProtocol"]),
        // The client library for rank processes written in Swift.
        .target(name: "GracefulRank", dependencies: ["CGraceful", "GracefulProtocol"]),
        .executableTarget(name: "graceful", dependencies: ["Graceful"]),
        .executableTarget(
            name: "swift-rank-example",
            dependencies: ["GracefulRank"],
            path: "examples/swift/rank"
        ),
        // The benchmark (docs/BENCHMARKS.md): `swift run -c release graceful-bench`.
        .executableTarget(name: "graceful-bench", dependencies: ["graceful", "graceful-bench-rank"]),
        // The rank the benchmark launches under `graceful run`, and its measurement peers.
        .executableTarget(name: "graceful-bench-rank", dependencies: ["CGraceful", "GracefulRank"]),
        // The Swift driver of the client conformance suite (Tests/python/test_conformance.py).
        .executableTarget(name: "graceful-conformance-rank", dependencies: ["GracefulProtocol", "GracefulRank"]),
        .testTarget(
            name: "GracefulTests",
            dependencies: [
                "CGraceful", "Graceful", "GracefulProtocol", "graceful", "swift-rank-example",
                "graceful-conformance-rank",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// swift-tools-version:6.2
import PackageDescription

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

let package = Package(
    name: "cloudscan",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cloudscan", targets: ["CloudScanCLI"]),
        .executable(name: "cloudscan-bench", targets: ["CloudScanBenchmarks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.8.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        // Domain: scan lifecycle, severities, message contracts. No dependencies.
        .target(name: "CloudScanCore"),

        // System libraries: one per C library, only imported by its wrapper module.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),

        // Wrappers: the only modules that touch unsafe pointers.
        .target(
            name: "CloudScanPostgres",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "CloudScanAMQP",
            dependencies: [
                "CRabbitMQ",
                "CloudScanCore",
                "CloudScanMetrics",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "CloudScanHTTP",
            dependencies: ["CCurl"]
        ),

        // Kubernetes over libcurl: config (in-cluster, kubeconfig), Jobs/pods/Secrets, watch, the Job spec.
        .target(
            name: "CloudScanKubernetes",
            dependencies: [
                "CloudScanCore",
                "CloudScanHTTP",
                .product(name: "Yams", package: "Yams"),
            ]
        ),

        // Safe extraction of tar, tar.gz and zip archives (zlib).
        .target(
            name: "CloudScanArchive",
            dependencies: ["CZlib"]
        ),

        // Parsers of what strangers send: findings batches and status reports (from runners), scanner
        // output (SARIF, shellcheck, detect-secrets, OSV). No I/O: what the fuzz targets exercise.
        .target(
            name: "CloudScanInbound",
            dependencies: [
                "CloudScanCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),

        // Child processes in their own process group, with time limits.
        .target(name: "CloudScanProcess", dependencies: ["CProcessControl"]),
        // prctl (variadic in C) for the runner: not dumpable, so its scanners cannot read its
        // /proc entries (the runner token and broker URL in its environment) or ptrace it.
        .target(name: "CProcessControl"),

        // The runner: artifact → archive → scanners → SARIF → findings and status messages.
        .target(
            name: "CloudScanRunner",
            dependencies: [
                "CloudScanCore",
                "CloudScanInbound",
                "CloudScanAMQP",
                "CloudScanHTTP",
                "CloudScanArchive",
                "CloudScanProcess",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The dispatcher: scan.create/retry → a runner (Kubernetes Job or local process), quota, cancel.
        .target(
            name: "CloudScanDispatcher",
            dependencies: [
                "CloudScanCore",
                "CloudScanMetrics",
                "CloudScanPostgres",
                "CloudScanAMQP",
                "CloudScanHTTP",
                "CloudScanKubernetes",
                "CloudScanAuth",
                "CloudScanStore",
                "CloudScanProcess",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The store: migrations, tenancy-scoped access to PostgreSQL.
        .target(
            name: "CloudScanStore",
            dependencies: [
                "CloudScanCore",
                "CloudScanPostgres",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The service layer behind both API transports.
        .target(
            name: "CloudScanService",
            dependencies: [
                "CloudScanCore",
                "CloudScanAuth",
                "CloudScanHTTP",
                "CloudScanPostgres",
                "CloudScanStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Who is calling: JWT (JWKS file or URL, HS256 for development) and client certificates.
        .target(
            name: "CloudScanAuth",
            dependencies: [
                "CloudScanCore",
                "CloudScanHTTP",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The gRPC transport over the service layer: cloudscan.v1.ScanService, health, reflection.
        // Generated/ is written by scripts/generate-grpc from proto/ and committed.
        .target(
            name: "CloudScanGRPC",
            dependencies: [
                "CloudScanCore",
                "CloudScanPostgres",
                "CloudScanService",
                "CloudScanAuth",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The API ingress: HTTP transport over the service layer.
        .target(
            name: "CloudScanAPI",
            dependencies: [
                "CloudScanCore",
                "CloudScanService",
                "CloudScanPostgres",
                "CloudScanAuth",
                "CloudScanMetrics",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Metrics: swift-metrics facade, Prometheus text exposition, the fleet's metric names.
        .target(
            name: "CloudScanMetrics",
            dependencies: [
                "CloudScanCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),

        // Workers: the outbox relay (more roles as they come).
        .target(
            name: "CloudScanWorkers",
            dependencies: [
                "CloudScanCore",
                "CloudScanInbound",
                "CloudScanMetrics",
                "CloudScanPostgres",
                "CloudScanAMQP",
                "CloudScanAuth",
                "CloudScanStore",
                "CloudScanHTTP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // The one executable, a subcommand per role.
        .executableTarget(
            name: "CloudScanCLI",
            dependencies: [
                "CloudScanCore",
                "CloudScanPostgres",
                "CloudScanAMQP",
                "CloudScanStore",
                "CloudScanWorkers",
                "CloudScanService",
                "CloudScanAPI",
                "CloudScanAuth",
                "CloudScanGRPC",
                "CloudScanRunner",
                "CloudScanProcess",
                "CloudScanHTTP",
                "CloudScanArchive",
                "CloudScanMetrics",
                "CloudScanDispatcher",
                "CloudScanKubernetes",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Benchmarks: scripts/bench-* drive this and print figures.
        .executableTarget(
            name: "CloudScanBenchmarks",
            dependencies: [
                "CloudScanPostgres",
                "CloudScanAMQP",
                "CloudScanAuth",
                "CloudScanCore",
                "CloudScanDispatcher",
                "CloudScanKubernetes",
                "CloudScanService",
                "CloudScanWorkers",
                "KubernetesStandIn",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Shared by the test targets: a schema per test on the live servers the scripts start.
        .target(
            name: "CloudScanTestSupport",
            dependencies: [
                "CloudScanPostgres", "CloudScanStore", "CloudScanAMQP", .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/CloudScanTestSupport"
        ),
        // The Kubernetes API stand-in (tests only, never shipped).
        .target(
            name: "KubernetesStandIn",
            dependencies: [
                "CloudScanCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/KubernetesStandIn"
        ),
        .testTarget(
            name: "CloudScanKubernetesTests",
            dependencies: [
                "CloudScanKubernetes", "CloudScanCore", "CloudScanHTTP", "KubernetesStandIn", "CloudScanTestSupport",
            ]
        ),
        .testTarget(
            name: "CloudScanDispatcherTests",
            dependencies: [
                "CloudScanDispatcher", "CloudScanKubernetes", "KubernetesStandIn", "CloudScanService", "CloudScanCore",
                "CloudScanAMQP", "CloudScanPostgres", "CloudScanAuth", "CloudScanTestSupport", "CloudScanMetrics",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CloudScanWorkersTests",
            dependencies: [
                "CloudScanWorkers", "CloudScanInbound", "CloudScanService", "CloudScanCore", "CloudScanAMQP",
                "CloudScanPostgres",
                "CloudScanAuth", "CloudScanHTTP", "CloudScanTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CloudScanRunnerTests",
            dependencies: [
                "CloudScanRunner", "CloudScanInbound", "CloudScanArchive", "CloudScanCore", "CloudScanTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "CloudScanCoreTests", dependencies: ["CloudScanCore", "CloudScanTestSupport"]),
        .testTarget(name: "CloudScanHTTPTests", dependencies: ["CloudScanHTTP", "CloudScanTestSupport"]),
        .testTarget(
            name: "CloudScanAPITests",
            dependencies: [
                "CloudScanAPI", "CloudScanService", "CloudScanHTTP", "CloudScanPostgres", "CloudScanTestSupport",
                "CloudScanAuth", "CloudScanGRPC", "CloudScanMetrics", "CloudScanAMQP", "CloudScanWorkers",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CloudScanServiceTests",
            dependencies: [
                "CloudScanService", "CloudScanWorkers", "CloudScanCore", "CloudScanPostgres", "CloudScanAMQP",
                "CloudScanTestSupport", "CloudScanAPI", "CloudScanAuth", "CloudScanHTTP",
                .product(name: "Hummingbird", package: "hummingbird"), .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CloudScanAMQPTests",
            dependencies: [
                "CloudScanAMQP", "CloudScanTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CloudScanPostgresTests",
            dependencies: [
                "CloudScanPostgres", "CloudScanTestSupport", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CloudScanStoreTests",
            dependencies: [
                "CloudScanStore", "CloudScanPostgres", "CloudScanCore", "CloudScanTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)

// The fuzz targets (Fuzz/CloudScanFuzz): one libFuzzer binary, built only by scripts/fuzz, which
// sets CLOUDSCAN_FUZZ=1 and builds with --sanitize=fuzzer --sanitize=address in a scratch path of
// its own. It has no `main` of its own (libFuzzer's is linked in), so ordinary builds leave it out.
if ProcessInfo.processInfo.environment["CLOUDSCAN_FUZZ"] == "1" {
    package.products.append(.executable(name: "cloudscan-fuzz", targets: ["CloudScanFuzz"]))
    package.targets.append(
        .executableTarget(
            name: "CloudScanFuzz",
            dependencies: [
                "CloudScanArchive", "CloudScanCore", "CloudScanInbound", "CloudScanAuth",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Fuzz/CloudScanFuzz"))
}

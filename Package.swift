// swift-tools-version:6.1
import PackageDescription

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
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "CloudScanHTTP",
            dependencies: ["CCurl"]
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
                "CloudScanPostgres",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // The API ingress: HTTP transport over the service layer.
        .target(
            name: "CloudScanAPI",
            dependencies: [
                "CloudScanCore",
                "CloudScanService",
                "CloudScanPostgres",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Workers: the outbox relay (more roles as they come).
        .target(
            name: "CloudScanWorkers",
            dependencies: [
                "CloudScanCore",
                "CloudScanPostgres",
                "CloudScanAMQP",
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
                .product(name: "Hummingbird", package: "hummingbird"),
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
        .testTarget(name: "CloudScanCoreTests", dependencies: ["CloudScanCore", "CloudScanTestSupport"]),
        .testTarget(name: "CloudScanHTTPTests", dependencies: ["CloudScanHTTP", "CloudScanTestSupport"]),
        .testTarget(
            name: "CloudScanAPITests",
            dependencies: [
                "CloudScanAPI", "CloudScanService", "CloudScanHTTP", "CloudScanPostgres", "CloudScanTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CloudScanServiceTests",
            dependencies: [
                "CloudScanService", "CloudScanWorkers", "CloudScanCore", "CloudScanPostgres", "CloudScanAMQP",
                "CloudScanTestSupport", .product(name: "Logging", package: "swift-log"),
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

import ArgumentParser
import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanPostgres
import Foundation
import Logging
import ServiceLifecycle

/// The pieces of the dispatcher role, built the same way by `cloudscan dispatcher` and `cloudscan dev`.
struct DispatcherParts {
    let client: PostgresClient
    let publisher: AMQPPublisher
    let services: [any Service]
    let localBackend: LocalProcessBackend?

    enum BackendKind: String, ExpressibleByArgument { case kubernetes, local }

    init(
        database: PostgresConfiguration, broker: AMQPConfiguration, backend kind: BackendKind, topology: AMQPTopology,
        concurrency: Int, environment: [String: String] = FleetSettings.values, development: Bool = false,
        logger: Logger
    ) throws {
        var database = database
        database.maximumConnections = max(database.maximumConnections, concurrency * 2 + 2)
        client = PostgresClient(configuration: database, logger: logger)
        let publisher = AMQPPublisher(
            configuration: .init(
                broker: broker, connectionName: "cloudscan-dispatcher", metrics: ProcessMetrics.shared), logger: logger)
        self.publisher = publisher
        let secret: String
        if let configured = environment["RUNNER_TOKEN_SECRET"], !configured.isEmpty {
            secret = configured
        } else if kind == .local {
            secret = developmentRunnerTokenSecret
            logger.warning("RUNNER_TOKEN_SECRET is not set: using the development secret (local backend only)")
        } else {
            throw ValidationError("RUNNER_TOKEN_SECRET (at least 32 bytes) is required")
        }
        let backend: any JobBackend
        switch kind {
        case .kubernetes:
            let kubernetes = try KubernetesConfiguration.fromEnvironment(environment)
            backend = KubernetesJobBackend(
                client: KubernetesClient(configuration: kubernetes),
                builder: JobSpecBuilder(
                    configuration: try Self.jobConfiguration(namespace: kubernetes.namespace, environment)),
                logger: logger)
            localBackend = nil
        case .local:
            let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
            var runnerEnvironment = [
                "CLOUDSCAN_BROKER_URL": environment["RUNNER_AMQP_URL"] ?? broker.redactedURLForRunner
            ]
            runnerEnvironment.merge(ScannerLocations.runnerEnvironment(environment)) { old, _ in old }
            if let amqp = environment["AMQP_URL"] {
                runnerEnvironment["CLOUDSCAN_BROKER_URL"] = environment["RUNNER_AMQP_URL"] ?? amqp
            }
            let local = LocalProcessBackend(
                configuration: .init(
                    command: (environment["LOCAL_RUNNER_COMMAND"].map { $0.split(separator: " ").map(String.init) })
                        ?? [executable, "runner"],
                    maximumConcurrent: try FleetSettings.integer("LOCAL_RUNNERS", 2, from: environment),
                    environment: runnerEnvironment),
                logger: logger)
            backend = local
            localBackend = local
        }
        let dispatcher = Dispatcher(
            client: self.client, backend: backend,
            artifacts: ArtifactResolver(
                storageURL: environment["STORAGE_URL"], token: environment["STORAGE_TOKEN"],
                policy: try FleetSettings.artifactPolicy(environment, development: development, logger: logger)),
            tokens: try RunnerTokenMinter(secret: secret), configuration: .init(metrics: ProcessMetrics.shared),
            logger: logger)
        func consumer(_ queue: String, _ handler: @escaping AMQPConsumerService.Handler) throws -> AMQPConsumerService {
            try .workQueue(
                queue, broker: broker, publisher: publisher, topology: topology, concurrency: concurrency,
                environment: environment, logger: logger, handler: handler)
        }
        var roles: [any Service] = [
            try consumer("cloudscan.dispatch", dispatcher.handleDispatch),
            try consumer("cloudscan.cancel", dispatcher.handleCancel),
        ]
        if case .local = kind, let local = backend as? LocalProcessBackend {
            roles.append(LocalOutcomeLogger(backend: local, logger: logger))
        }
        self.services = roles
    }

    /// The Job spec from the environment: RUNNER_IMAGE, RUNNER_IMAGE_PULL_POLICY,
    /// RUNNER_IMAGE_<SCAN TYPE> (an image per scan type), JOB_TTL_SECONDS, RUNNER_NODE_SELECTOR
    /// (k=v,k=v), RUNNER_TOLERATIONS (JSON array), RUNNER_BROKER_SECRET (name:key),
    /// RUNNER_SERVICE_ACCOUNT.
    static func jobConfiguration(namespace: String, _ environment: [String: String]) throws
        -> JobSpecBuilder.Configuration
    {
        var configuration = JobSpecBuilder.Configuration(namespace: namespace)
        let pullPolicy = environment["RUNNER_IMAGE_PULL_POLICY"] ?? "IfNotPresent"
        if let image = environment["RUNNER_IMAGE"] {
            configuration.defaultProfile.image = image
        }
        configuration.defaultProfile.pullPolicy = pullPolicy
        for type in ScanType.allCases {
            if let image = environment["RUNNER_IMAGE_\(type.rawValue.uppercased())"] {
                configuration.profiles[type] = .init(image: image, pullPolicy: pullPolicy)
            }
        }
        if let ttl = environment["JOB_TTL_SECONDS"].flatMap(Int.init) { configuration.ttlSecondsAfterFinished = ttl }
        if let selector = environment["RUNNER_NODE_SELECTOR"], !selector.isEmpty {
            for pair in selector.split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw ValidationError("RUNNER_NODE_SELECTOR: \(pair) is not key=value") }
                configuration.nodeSelector[parts[0]] = parts[1]
            }
        }
        if let tolerations = environment["RUNNER_TOLERATIONS"], !tolerations.isEmpty {
            do {
                configuration.tolerations = try JSONDecoder().decode([Toleration].self, from: Data(tolerations.utf8))
            } catch {
                throw ValidationError("RUNNER_TOLERATIONS is not a JSON array of tolerations: \(error)")
            }
        }
        if let secret = environment["RUNNER_BROKER_SECRET"], !secret.isEmpty {
            let parts = secret.split(separator: ":", maxSplits: 1).map(String.init)
            configuration.brokerSecretName = parts[0]
            if parts.count == 2 { configuration.brokerSecretKey = parts[1] }
        }
        configuration.serviceAccountName = environment["RUNNER_SERVICE_ACCOUNT"]
        return configuration
    }

    func close() async {
        await publisher.close()
        await client.shutdown()
    }
}

/// Logs how each local runner ended (the sweeper's counterpart for processes reconciles them).
struct LocalOutcomeLogger: Service {
    let backend: LocalProcessBackend
    let logger: Logger

    func run() async throws {
        await withGracefulShutdownHandler {
            for await outcome in backend.outcomes.cancelOnGracefulShutdown() {
                logger.notice(
                    "local runner ended",
                    metadata: [
                        "scan_id": "\(outcome.scanID.uuidString.lowercased())", "attempt": "\(outcome.attempt)",
                        "ending": "\(outcome.ending)",
                    ])
            }
        } onGracefulShutdown: {
        }
    }
}

extension AMQPConfiguration {
    /// The broker URL handed to local runners when RUNNER_AMQP_URL and AMQP_URL are unset.
    var redactedURLForRunner: String { "amqp://\(host):\(port)/" }
}

/// `cloudscan dispatcher`: scan.create/retry → runners; scan.cancel → stop them.
struct DispatcherCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatcher",
        abstract: "Dispatch queued scans to runners (Kubernetes Jobs or local processes); SIGTERM drains and exits.")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var broker: BrokerOptions
    @Option(help: "kubernetes or local (env JOB_BACKEND; default kubernetes).") var backend:
        DispatcherParts.BackendKind?
    @Option(help: "Messages handled at once per queue (env DISPATCH_CONCURRENCY; default 8).") var concurrency: Int?
    @Option(help: "The topology file, for the delay tiers (env TOPOLOGY_FILE).") var topology: String?

    func run() async throws {
        let environment = FleetSettings.values
        let logger = try database.makeLogger(label: "cloudscan.dispatcher")
        let kind =
            backend ?? environment["JOB_BACKEND"].flatMap(DispatcherParts.BackendKind.init(rawValue:)) ?? .kubernetes
        let topologyFile = try locateRepositoryFile(
            "topology/topology.json", flag: topology ?? environment["TOPOLOGY_FILE"])
        let parts = try DispatcherParts(
            database: database.postgresConfiguration(applicationName: "cloudscan-dispatcher"),
            broker: try broker.configuration(), backend: kind, topology: try AMQPTopology.load(from: topologyFile),
            concurrency: try concurrency ?? FleetSettings.integer("DISPATCH_CONCURRENCY", 8, from: environment),
            logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: parts.services + [
                    try metricsEndpoint(defaultPort: 9101, environment: environment, logger: logger)
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice("dispatcher running", metadata: ["backend": "\(kind.rawValue)"])
        try await group.run()
        await parts.close()
    }
}

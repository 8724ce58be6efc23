import ArgumentParser
import CloudScanAMQP
import CloudScanArchive
import CloudScanCore
import CloudScanKubernetes
import CloudScanProcess
import CloudScanRunner
import Foundation
import Logging

/// Where the runner finds its scanners: the catalog (`CLOUDSCAN_SCANNER_CATALOG`, else the
/// repository's scanners/scanners.json, else /etc/cloudscan/scanners.json) and the executables
/// (`CLOUDSCAN_SCANNERS_PATH`, default the virtualenv scripts/install-scanners makes).
enum ScannerLocations {
    static let defaultHome = "/opt/cloudscan/scanners"

    static func catalogPath(_ environment: [String: String]) throws -> String {
        if let path = environment["CLOUDSCAN_SCANNER_CATALOG"] { return path }
        if let found = try? locateRepositoryFile("scanners/scanners.json", flag: nil) { return found.path }
        return "/etc/cloudscan/scanners.json"
    }

    static func searchPath(_ environment: [String: String]) -> [String] {
        (environment["CLOUDSCAN_SCANNERS_PATH"] ?? "\(environment["CLOUDSCAN_SCANNERS_HOME"] ?? defaultHome)/bin")
            .split(separator: ":").map(String.init)
    }

    /// What a runner started by the local backend inherits from the dispatcher.
    static func runnerEnvironment(_ environment: [String: String]) -> [String: String] {
        var out: [String: String] = [:]
        out["CLOUDSCAN_SCANNER_CATALOG"] = try? catalogPath(environment)
        out["CLOUDSCAN_SCANNERS_PATH"] = searchPath(environment).joined(separator: ":")
        for key in ["CLOUDSCAN_OSV_DIR", "CLOUDSCAN_HEARTBEAT_SECONDS", "CLOUDSCAN_MAX_ARTIFACT_BYTES", "LOG_LEVEL"] {
            if let value = environment[key] { out[key] = value }
        }
        return out
    }
}

/// `cloudscan runner`: one scan attempt, configured by the environment its Job (or the local
/// backend) gives it.
struct RunnerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "runner",
        abstract: "Scan one artifact and publish its findings and status (configured by CLOUDSCAN_* variables).",
        discussion: """
            Environment: CLOUDSCAN_SCAN_ID, CLOUDSCAN_ORGANIZATION_ID, CLOUDSCAN_ATTEMPT, CLOUDSCAN_SCAN_TYPES \
            (comma list), CLOUDSCAN_ARTIFACT_URL (https:// or file://), CLOUDSCAN_ARTIFACT_SHA256, \
            CLOUDSCAN_TIMEOUT_SECONDS, CLOUDSCAN_RUNNER_TOKEN, CLOUDSCAN_BROKER_URL; optional \
            CLOUDSCAN_SCANNER_CATALOG, CLOUDSCAN_SCANNERS_PATH, CLOUDSCAN_OSV_DIR, CLOUDSCAN_HEARTBEAT_SECONDS, \
            CLOUDSCAN_MAX_ARTIFACT_BYTES, CLOUDSCAN_KEEP_SARIF_DIR, TRACEPARENT. \
            Exit status: 0 completed (also partial), 2 failed and reported, 1 could not report.
            """)

    @Option(help: "Log level (env LOG_LEVEL).")
    var logLevel: String?

    func run() async throws {
        // First of all: the scanners this process runs read strangers' repositories, and this
        // process's environment holds the runner token and the broker URL. Not dumpable, its
        // /proc entries are root's and it cannot be ptraced by them (same user); their own
        // environment is reduced to PATH, HOME, TMPDIR, locale and the catalog's.
        let protected = ProcessProtection.forbidInspection()
        let environment = FleetSettings.values
        var logger = try makeFleetLogger(
            label: "cloudscan.runner", level: logLevel, environment: environment, defaultFormat: .json)
        if !protected { logger.warning("could not make the runner non-dumpable; scanners may read its environment") }
        typealias Env = RunnerAssignment.Environment
        func required(_ key: String) throws -> String {
            guard let value = environment[key], !value.isEmpty else { throw ValidationError("\(key) is required") }
            return value
        }
        func parsed<T>(_ key: String, _ parse: (String) -> T?) throws -> T {
            guard let value = parse(try required(key)) else { throw ValidationError("\(key) is not valid") }
            return value
        }
        let scanID = try parsed(Env.scanID, UUID.init(uuidString:))
        let organizationID = try parsed(Env.organizationID, UUID.init(uuidString:))
        let attempt = try parsed(Env.attempt) { Int($0).flatMap { $0 >= 0 ? $0 : nil } }
        let types = try parsed(Env.scanTypes) { text -> [ScanType]? in
            let types = text.split(separator: ",").map { ScanType(rawValue: String($0)) }
            return types.isEmpty || types.contains(nil) ? nil : types.compactMap { $0 }
        }
        let timeout = try parsed(Env.timeoutSeconds) { Int($0).flatMap { $0 > 0 ? $0 : nil } }
        let broker: AMQPConfiguration
        do {
            broker = try AMQPConfiguration(url: try required(Env.brokerURL))
        } catch let error as ValidationError {
            throw error
        } catch {
            throw ValidationError("\(Env.brokerURL): \(error)")
        }
        logger[metadataKey: "scan_id"] = "\(scanID)"
        logger[metadataKey: "organization_id"] = "\(organizationID)"
        logger[metadataKey: "attempt"] = "\(attempt)"
        let catalog: ScannerCatalog
        do {
            catalog = try ScannerCatalog.load(path: try ScannerLocations.catalogPath(environment))
        } catch {
            throw ValidationError("the scanner catalog: \(error)")
        }
        // This runner's span of the scan's trace (TRACEPARENT from the dispatcher), handed on in
        // every findings and status message it publishes.
        let trace = environment["TRACEPARENT"].flatMap(TraceContext.init(traceparent:))?.child()
        let configuration = Runner.Configuration(
            scanID: scanID, organizationID: organizationID, attempt: attempt, scanTypes: types,
            artifactURL: try required(Env.artifactURL),
            artifactSHA256: environment[Env.artifactSHA256].flatMap { $0.isEmpty ? nil : $0 },
            timeoutSeconds: timeout, runnerToken: try required(Env.runnerToken),
            traceparent: trace?.traceparent,
            heartbeatInterval: .seconds(
                try FleetSettings.integer("CLOUDSCAN_HEARTBEAT_SECONDS", 30, from: environment)),
            workDirectory: environment["TMPDIR"] ?? NSTemporaryDirectory(),
            executor: .init(
                catalog: catalog, searchPath: ScannerLocations.searchPath(environment),
                osvDirectory: environment["CLOUDSCAN_OSV_DIR"],
                keepSARIFDirectory: environment["CLOUDSCAN_KEEP_SARIF_DIR"], options: try scannerOptions(environment)),
            fetcher: .init(
                maximumBytes: try FleetSettings.integer("CLOUDSCAN_MAX_ARTIFACT_BYTES", 512 << 20, from: environment)))
        let publisher = AMQPPublisher(
            configuration: .init(
                broker: broker, connectionName: "cloudscan-runner-\(scanID)", metrics: ProcessMetrics.shared),
            logger: logger)
        let result: Runner.Result
        do {
            result = try await LogContext.with([:], trace: trace) {
                try await Runner(configuration: configuration, publisher: publisher, logger: logger).run()
            }
        } catch {
            logger.critical("the runner could not finish its reports", metadata: ["error": "\(error)"])
            await publisher.close()
            throw ExitCode(1)
        }
        await publisher.close()
        logger.notice("runner finished", metadata: ["result": "\(result)"])
        if case .failed = result { throw ExitCode(2) }
    }
}

/// The project's scanner options from the dispatcher (CLOUDSCAN_SCANNER_OPTIONS, JSON); none when unset.
func scannerOptions(_ environment: [String: String]) throws -> ScannerOptions {
    guard let text = environment[RunnerAssignment.Environment.scannerOptions], !text.isEmpty else {
        return ScannerOptions()
    }
    do {
        return try ScannerOptions(try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)))
    } catch let error as ScanServiceError {
        throw ValidationError("CLOUDSCAN_SCANNER_OPTIONS: \(error.field.map { "\($0): " } ?? "")\(error.message)")
    } catch {
        throw ValidationError("CLOUDSCAN_SCANNER_OPTIONS is not JSON")
    }
}

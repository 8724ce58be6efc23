import CloudScanCore
import CloudScanInbound
import CloudScanProcess
import Foundation
import Logging

/// Runs the catalog's scanners for some scan types over a source tree and turns their output
/// into findings. A scanner that crashes, exits with an unexpected code, writes no readable
/// output or runs out of time is reported with that outcome and reason — never as clean.
public struct ScanExecutor: Sendable {
    public struct Configuration: Sendable {
        public var catalog: ScannerCatalog
        /// Directories searched for scanner executables, before `PATH`.
        public var searchPath: [String]
        /// OSV advisories for sca; nil means "advisory database unavailable".
        public var osvDirectory: String?
        /// Each scanner's SARIF (converted where needed) is copied here when set.
        public var keepSARIFDirectory: String?
        /// The project's scanner options: scanners turned off, paths excluded.
        public var options: ScannerOptions

        public init(
            catalog: ScannerCatalog, searchPath: [String] = [], osvDirectory: String? = nil,
            keepSARIFDirectory: String? = nil, options: ScannerOptions = ScannerOptions()
        ) {
            self.options = options
            self.catalog = catalog
            self.searchPath = searchPath
            self.osvDirectory = osvDirectory
            self.keepSARIFDirectory = keepSARIFDirectory
        }
    }

    public struct ScannerResult: Sendable {
        public var scanner: ScannerCatalog.Scanner
        public var outcome: StatusReportMessage.ScannerOutcome
        public var findings: [FindingRecord]
    }

    let configuration: Configuration
    let logger: Logger

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Runs each scanner of `types` in turn over `root`, within `deadline`; `onResult` sees each
    /// scanner's result as soon as it is in (to publish its findings).
    public func scan(
        root: String, types: [ScanType], workDirectory: String, deadline: ContinuousClock.Instant,
        onResult: (ScannerResult) async throws -> Void
    ) async throws {
        for scanner in configuration.catalog.scanners(for: types) {
            var result = await run(scanner, root: root, workDirectory: workDirectory, deadline: deadline)
            let excluded = result.findings.filter { configuration.options.excludes(scanner.name, path: $0.path) }
            if !excluded.isEmpty {
                result.findings.removeAll { configuration.options.excludes(scanner.name, path: $0.path) }
                result.outcome.findings = result.findings.count
            }
            logger.info(
                "scanner finished",
                metadata: [
                    "scanner": "\(scanner.name)", "outcome": "\(result.outcome.outcome.rawValue)",
                    "findings": "\(result.findings.count)", "duration_ms": "\(result.outcome.durationMS ?? 0)",
                    "reason": "\(result.outcome.reason ?? "-")",
                ])
            try await onResult(result)
        }
    }

    func run(
        _ scanner: ScannerCatalog.Scanner, root: String, workDirectory: String, deadline: ContinuousClock.Instant
    ) async -> ScannerResult {
        let started = ContinuousClock.now
        func done(_ outcome: StatusReportMessage.ScannerOutcome.Outcome, _ reason: String?, _ findings: [FindingRecord])
            -> ScannerResult
        {
            let elapsed = ContinuousClock.now - started
            let milliseconds = Int(
                elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
            return ScannerResult(
                scanner: scanner,
                outcome: .init(
                    name: scanner.name, outcome: outcome, durationMS: milliseconds, findings: findings.count,
                    reason: reason.map { String($0.prefix(1024)) }),
                findings: findings)
        }
        if !configuration.options.isEnabled(scanner.name) {
            return done(.skipped, "disabled by the project's scanner options", [])
        }
        if scanner.format == .cyclonedxOSV && configuration.osvDirectory == nil {
            return done(.skipped, "advisory database unavailable", [])
        }
        let out = workDirectory + "/out-" + scanner.name
        try? FileManager.default.removeItem(atPath: out)
        do {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        } catch {
            return done(.failed, "cannot create its output directory: \(error)", [])
        }
        var files: [String] = []
        if scanner.inputs != nil || scanner.inputShebangs != nil {
            files = InputFiles.matching(scanner, root: root)
            if files.isEmpty { return done(.skipped, "no input files", []) }
        }
        var command: [String] = []
        for argument in scanner.command {
            if argument == "{files}" {
                command.append(contentsOf: files)
            } else {
                command.append(
                    argument.replacingOccurrences(of: "{out}", with: out).replacingOccurrences(
                        of: "{config}", with: configuration.catalog.directory))
            }
        }
        let inherited = ProcessInfo.processInfo.environment
        let path = (configuration.searchPath + [inherited["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"]).joined(
            separator: ":")
        guard let executable = ChildProcess.resolve(command[0], path: path) else {
            return done(.failed, "\(command[0]) is not installed (searched \(path))", [])
        }
        command[0] = executable
        var environment = inherited.filter { ["LANG", "LC_ALL", "TZ", "HOME", "TMPDIR"].contains($0.key) }
        environment["PATH"] = path
        environment["HOME"] = environment["HOME"] ?? workDirectory
        environment["TMPDIR"] = workDirectory
        environment.merge(scanner.environment ?? [:]) { _, new in new }
        let remaining = deadline - .now
        guard remaining > .seconds(1) else { return done(.timedOut, "no time left in the scan's time limit", []) }
        let timeout = min(Duration.seconds(scanner.timeoutSeconds), remaining)
        let stdout = out + "/stdout"
        let stderr = out + "/stderr"
        let ending: ChildProcess.Ending
        do {
            ending = try await ChildProcess.run(
                command, environment: environment, directory: root, stdout: stdout, stderr: stderr, timeout: timeout)
        } catch {
            return done(.failed, "\(error)", [])
        }
        switch ending {
        case .timedOut:
            return done(.timedOut, "ran past its \(timeout) limit", [])
        case .signaled(let signal):
            return done(.failed, "killed by signal \(signal)\(Self.tail(stderr))", [])
        case .exited(let code) where !scanner.okExitCodes.contains(code):
            return done(.failed, "exited with \(code)\(Self.tail(stderr))", [])
        case .exited:
            break
        }
        let resultPath = scanner.result == "stdout" ? stdout : out + "/" + scanner.result
        guard let data = FileManager.default.contents(atPath: resultPath), !data.isEmpty else {
            return done(.failed, "wrote no \(scanner.result)\(Self.tail(stderr))", [])
        }
        do {
            let sarif: JSONValue
            switch scanner.format {
            case .sarif: sarif = try JSONDecoder().decode(JSONValue.self, from: data)
            case .shellcheckJSON1: sarif = try SARIFConverters.shellcheck(data)
            case .detectSecretsJSON: sarif = try SARIFConverters.detectSecrets(data)
            case .cyclonedxOSV:
                let database = try OSVDatabase(directory: configuration.osvDirectory!)
                sarif = database.match(sbom: try JSONDecoder().decode(JSONValue.self, from: data))
            }
            if let keep = configuration.keepSARIFDirectory {
                try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
                try? Data(sarif.jsonText.utf8).write(to: URL(fileURLWithPath: "\(keep)/\(scanner.name).sarif"))
            }
            var normalizer = SARIFNormalizer(
                scanner: scanner.name, root: root, ruleIDLastComponent: scanner.ruleIDLastComponent ?? false)
            let findings = try normalizer.findings(from: sarif)
            return done(.ok, nil, findings)
        } catch {
            return done(.failed, "unreadable output: \(error)", [])
        }
    }

    /// The end of a scanner's stderr, for a failure's reason.
    static func tail(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { return "" }
        let text = String(decoding: data.suffix(400), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "" : ": " + text.replacingOccurrences(of: "\n", with: " | ")
    }
}

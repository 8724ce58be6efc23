import CloudScanCore
import CloudScanRunner
import CloudScanTestSupport
import Foundation
import Logging
import Testing

/// The real scanners (scripts/install-scanners) over the sample repository with planted issues.
@Suite("scanners on the sample repository")
struct ScannerTests {
    static let root = TestDatabase.repositoryRoot
    static let scannersHome =
        ProcessInfo.processInfo.environment["CLOUDSCAN_SCANNERS_HOME"] ?? "/opt/cloudscan/scanners"

    /// The sample repository copied out of this git checkout (as the runner would extract it),
    /// every scanner run over it, each scanner's SARIF kept.
    static func scanSample(
        catalog: ScannerCatalog? = nil, types: [ScanType] = ScanType.allCases, osv: Bool = true,
        timeout: Duration = .seconds(600)
    ) async throws -> (results: [ScanExecutor.ScannerResult], sarif: String, work: String) {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("scan-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let source = work + "/src"
        try FileManager.default.copyItem(
            atPath: root.appendingPathComponent("Tests/Fixtures/sample-repo").path, toPath: source)
        let executor = ScanExecutor(
            configuration: .init(
                catalog: try catalog
                    ?? ScannerCatalog.load(path: root.appendingPathComponent("scanners/scanners.json").path),
                searchPath: [scannersHome + "/bin"],
                osvDirectory: osv ? root.appendingPathComponent("Tests/Fixtures/osv").path : nil,
                keepSARIFDirectory: work + "/sarif"),
            logger: Logger(label: "scan"))
        var results: [ScanExecutor.ScannerResult] = []
        try await executor.scan(root: source, types: types, workDirectory: work, deadline: .now + timeout) {
            results.append($0)
        }
        return (results, work + "/sarif", work)
    }

    static let expected: [String: Set<String>] = [
        "semgrep": [
            "python-hardcoded-password", "python-subprocess-shell-true", "python-yaml-load", "python-pickle-loads",
            "python-weak-hash-md5", "python-eval", "c-strcpy", "c-format-string",
        ],
        "bandit": ["B105", "B301", "B307", "B324", "B403", "B404", "B506", "B602"],
        "flawfinder": ["FF1001", "FF1013", "FF1016"],
        "cppcheck": ["arrayIndexOutOfBounds"],
        "shellcheck": ["SC2086", "SC2164"],
        "gitleaks": ["github-pat", "stripe-access-token"],
        "detect-secrets": [
            "detect-secrets.github-token", "detect-secrets.stripe-access-key", "detect-secrets.secret-keyword",
            "detect-secrets.base64-high-entropy-string",
        ],
        "checkov": [
            "CKV2_AWS_5", "CKV2_AWS_6", "CKV2_AWS_61", "CKV2_AWS_62", "CKV2_GHA_1", "CKV_AWS_144", "CKV_AWS_145",
            "CKV_AWS_18", "CKV_AWS_20", "CKV_AWS_21", "CKV_AWS_23", "CKV_AWS_24", "CKV_DOCKER_2", "CKV_DOCKER_3",
            "CKV_DOCKER_4", "CKV_DOCKER_7", "CKV_GHA_2",
        ],
        "hadolint": ["DL3007", "DL3008", "DL3009", "DL3015", "DL3025"],
        "zizmor": [
            "zizmor/artipacked", "zizmor/excessive-permissions", "zizmor/template-injection", "zizmor/unpinned-uses",
        ],
        "syft-osv": ["GHSA-8q59-q68h-6hv4", "GHSA-9hjg-9r4m-mvj7", "GHSA-x84v-xcm2-53pg"],
    ]

    @Test("the project's scanner options: a scanner turned off is skipped, excluded paths drop their findings")
    func options() async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("opts-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let source = work + "/src"
        try FileManager.default.copyItem(
            atPath: Self.root.appendingPathComponent("Tests/Fixtures/sample-repo").path, toPath: source)
        let options = try ScannerOptions(
            .object([
                "bandit": .object(["enabled": .bool(false)]),
                "semgrep": .object(["exclude_paths": .array([.string("*.py")])]),
            ]))
        let executor = ScanExecutor(
            configuration: .init(
                catalog: try ScannerCatalog.load(path: Self.root.appendingPathComponent("scanners/scanners.json").path),
                searchPath: [Self.scannersHome + "/bin"], options: options),
            logger: Logger(label: "scan"))
        var results: [ScanExecutor.ScannerResult] = []
        try await executor.scan(
            root: source, types: [ScanType.sast], workDirectory: work, deadline: .now + .seconds(300)
        ) {
            results.append($0)
        }
        let bandit = try #require(results.first { $0.scanner.name == "bandit" })
        #expect(
            bandit.outcome.outcome == .skipped && bandit.outcome.reason == "disabled by the project's scanner options")
        let semgrep = try #require(results.first { $0.scanner.name == "semgrep" })
        #expect(semgrep.outcome.outcome == .ok)
        #expect(semgrep.findings.allSatisfy { !($0.path ?? "").hasSuffix(".py") }, "\(semgrep.findings.map(\.path))")
        #expect(Set(semgrep.findings.map(\.ruleID)) == ["c-strcpy", "c-format-string"], "the C findings stay")
        #expect(semgrep.outcome.findings == semgrep.findings.count)
    }

    @Test("every scanner runs offline and finds what was planted; every SARIF validates against SARIF 2.1.0")
    func sampleRepository() async throws {
        let (results, sarif, work) = try await Self.scanSample()
        defer { try? FileManager.default.removeItem(atPath: work) }
        #expect(Set(results.map(\.scanner.name)) == Set(Self.expected.keys))
        for result in results {
            let name = result.scanner.name
            #expect(result.outcome.outcome == .ok, "\(name): \(result.outcome.reason ?? "-")")
            #expect(Set(result.findings.map(\.ruleID)) == Self.expected[name], "\(name)")
            for finding in result.findings {
                #expect(finding.scanner == name)
                #expect(!finding.title.isEmpty && !finding.ruleID.isEmpty, "\(name) \(finding.ruleID)")
                #expect(finding.fingerprint.count == 64)
                if let path = finding.path {
                    #expect(
                        !path.hasPrefix("/") && !path.hasPrefix("./") && !path.hasPrefix("file:"), "\(name): \(path)")
                    #expect(
                        FileManager.default.fileExists(
                            atPath: Self.root.appendingPathComponent("Tests/Fixtures/sample-repo/\(path)").path),
                        "\(name): \(path) is a file of the repository")
                }
            }
            #expect(
                Set(result.findings.map(\.fingerprint)).count == result.findings.count, "\(name): unique fingerprints")
        }
        // Severities and CWEs came through.
        let all = results.flatMap(\.findings)
        let eval = all.first { $0.scanner == "semgrep" && $0.ruleID == "python-eval" }
        #expect(eval?.severity == .critical, "security-severity 9.1 → critical")
        #expect(eval?.cwe == ["CWE-95"])
        #expect(eval?.path == "src/app.py" && eval?.line == 33)
        #expect(all.first { $0.ruleID == "GHSA-8q59-q68h-6hv4" }?.severity == .critical)
        #expect(all.first { $0.ruleID == "GHSA-x84v-xcm2-53pg" }?.path == "requirements.txt")
        #expect(all.first { $0.ruleID == "B602" }?.severity == .high)

        // The official schema, by an outside validator; and that validator does refuse a bad document.
        let files = (try FileManager.default.contentsOfDirectory(atPath: sarif)).sorted().map { sarif + "/" + $0 }
        #expect(files.count == Self.expected.count)
        try #"{"version":"2.1.0","runs":[{"tool":{"driver":{}},"results":[{"level":"severe"}]}]}"#.write(
            toFile: work + "/broken.sarif", atomically: true, encoding: .utf8)
        let (status, output) = try await runCommandCapturingOutput(
            [
                Self.scannersHome + "/bin/python",
                Self.root.appendingPathComponent("Tests/clients/validate_sarif.py").path,
            ]
                + files + [work + "/broken.sarif"])
        #expect(status == 1)
        let lines = output.split(separator: "\n")
        #expect(lines.count == files.count + 1, "\(output)")
        #expect(lines.dropLast().allSatisfy { $0.hasPrefix("ok ") }, "\(output)")
        #expect(lines.last?.hasPrefix("invalid ") == true, "\(output)")
    }

    @Test("sca without an advisory database says so (skipped, never clean)")
    func scaWithoutDatabase() async throws {
        let (results, _, work) = try await Self.scanSample(types: [.sca], osv: false)
        defer { try? FileManager.default.removeItem(atPath: work) }
        #expect(results.count == 1)
        #expect(results[0].outcome.outcome == .skipped)
        #expect(results[0].outcome.reason == "advisory database unavailable")
    }

    @Test("a scanner added by configuration alone; crashing, hanging and missing scanners are reported, not clean")
    func configuredScanners() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cat-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A "scanner" that writes SARIF with an absolute file:// URI.
        try #"""
        #!/bin/sh
        cat > "$1" <<SARIF
        {"version":"2.1.0","runs":[{"tool":{"driver":{"name":"grep-todo","rules":[{"id":"todo","shortDescription":{"text":"A TODO"},"properties":{"security-severity":"4.2","tags":["external/cwe/cwe-546"]}}]}},
         "results":[{"ruleId":"todo","message":{"text":"TODO left"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"file://$PWD/README.md"},"region":{"startLine":3}}}]}]}]}
        SARIF
        """#.write(toFile: directory + "/todo.sh", atomically: true, encoding: .utf8)
        // Run through sh: exec'ing a file just written races with forks elsewhere in the test
        // process that inherited its write descriptor (ETXTBSY).
        try """
        {"scanners": [
          {"name": "grep-todo", "scan_type": "sast", "command": ["/bin/sh", "\(directory)/todo.sh", "{out}/result.sarif"]},
          {"name": "crasher", "scan_type": "sast", "command": ["/bin/sh", "-c", "echo boom >&2; kill -SEGV $$"]},
          {"name": "exits-3", "scan_type": "sast", "command": ["/bin/sh", "-c", "echo bad flag >&2; exit 3"]},
          {"name": "hangs", "scan_type": "sast", "command": ["/bin/sh", "-c", "sleep 60"], "timeout_seconds": 1},
          {"name": "garbage", "scan_type": "sast", "command": ["/bin/sh", "-c", "echo not json"], "result": "stdout"},
          {"name": "missing", "scan_type": "sast", "command": ["no-such-scanner-binary"]},
          {"name": "no-inputs", "scan_type": "sast", "command": ["/bin/true"], "inputs": ["*.cobol"]}
        ]}
        """.write(toFile: directory + "/scanners.json", atomically: true, encoding: .utf8)
        let started = ContinuousClock.now
        let (results, _, work) = try await Self.scanSample(
            catalog: try ScannerCatalog.load(path: directory + "/scanners.json"), types: [.sast])
        defer { try? FileManager.default.removeItem(atPath: work) }
        #expect(ContinuousClock.now - started < .seconds(30), "the hanging scanner was stopped at its limit")
        let byName = Dictionary(uniqueKeysWithValues: results.map { ($0.scanner.name, $0) })
        let todo = byName["grep-todo"]!
        #expect(todo.outcome.outcome == .ok, "\(todo.outcome)")
        #expect(todo.findings.count == 1)
        #expect(todo.findings.first?.path == "README.md", "the absolute file:// URI is made relative")
        #expect(todo.findings.first?.severity == .medium)
        #expect(todo.findings.first?.cwe == ["CWE-546"])
        #expect(byName["crasher"]?.outcome.outcome == .failed)
        #expect(byName["crasher"]?.outcome.reason?.contains("signal 11") == true, "\(byName["crasher"]!.outcome)")
        #expect(byName["exits-3"]?.outcome.reason?.contains("exited with 3") == true)
        #expect(byName["exits-3"]?.outcome.reason?.contains("bad flag") == true, "stderr's tail is in the reason")
        #expect(byName["hangs"]?.outcome.outcome == .timedOut)
        #expect(byName["garbage"]?.outcome.outcome == .failed)
        #expect(byName["garbage"]?.outcome.reason?.contains("unreadable output") == true)
        #expect(byName["missing"]?.outcome.outcome == .failed)
        #expect(byName["missing"]?.outcome.reason?.contains("not installed") == true)
        #expect(byName["no-inputs"]?.outcome.outcome == .skipped)
    }
}

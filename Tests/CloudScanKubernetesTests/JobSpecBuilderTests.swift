import CloudScanCore
import CloudScanTestSupport
import Foundation
import Testing

@testable import CloudScanKubernetes

@Suite("JobSpecBuilder")
struct JobSpecBuilderTests {
    static let scanID = UUID(uuidString: "B4E4FD84-C062-4BB7-B2BA-EEE5749A670C")!
    static let organizationID = UUID(uuidString: "0D666C71-9C41-4DAC-9A44-77A98826F10E")!

    static func assignment(_ types: [ScanType] = [.sast], attempt: Int = 1, sha: String? = nil) -> RunnerAssignment {
        RunnerAssignment(
            scanID: scanID, organizationID: organizationID, attempt: attempt, scanTypes: types,
            artifactURL: "https://storage.local/artifacts/b4e4?sig=abc&exp=1795000000", artifactSHA256: sha,
            timeoutSeconds: 1800, runnerToken: "v1.runner-token")
    }

    static let configured = JobSpecBuilder(
        configuration: .init(
            namespace: "cloudscan",
            profiles: [
                .sast: .init(
                    image: "ghcr.io/cloudscan/runner-sast:0.1.0", cpuRequest: 500, cpuLimit: 2000,
                    memoryRequestMiB: 512, memoryLimitMiB: 2048),
                .secrets: .init(
                    image: "ghcr.io/cloudscan/runner-sast:0.1.0", cpuRequest: 250, cpuLimit: 500, memoryRequestMiB: 128,
                    memoryLimitMiB: 256),
                .iac: .init(image: "ghcr.io/cloudscan/runner-iac:0.1.0", pullPolicy: "Always"),
            ],
            nodeSelector: ["cloudscan.io/pool": "scanners"],
            tolerations: [.init(key: "cloudscan.io/scanners", operator: "Exists", effect: "NoSchedule")]))

    @Test("deterministic DNS-1123 names within 63 characters, unique per scan and attempt")
    func names() {
        let a = Self.assignment()
        #expect(a.jobName == "cloudscan-b4e4fd84c0624bb7b2baeee5749a670c-1")
        #expect(Self.assignment(attempt: 2).jobName != a.jobName)
        let longest = Self.assignment(attempt: Int(Int32.max)).jobName
        #expect(longest.count <= 63)
        #expect(longest.range(of: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", options: .regularExpression) != nil)
    }

    @Test("the Job: labels, no retries of its own, deadline, TTL, hardened pod, secrets by reference")
    func spec() throws {
        let job = Self.configured.job(Self.assignment([.sast, .secrets], sha: String(repeating: "a", count: 64)))
        let labels = try #require(job.metadata.labels)
        #expect(labels["app.kubernetes.io/managed-by"] == "cloudscan")
        #expect(labels["cloudscan.io/scan-id"] == Self.scanID.uuidString.lowercased())
        #expect(labels["cloudscan.io/organization-id"] == Self.organizationID.uuidString.lowercased())
        #expect(labels["cloudscan.io/attempt"] == "1")
        let spec = try #require(job.spec)
        #expect(spec.backoffLimit == 0)
        #expect(spec.activeDeadlineSeconds == 1800 + 60)
        #expect(spec.ttlSecondsAfterFinished == 3600)
        #expect(spec.template.metadata?.labels == labels)
        let pod = try #require(spec.template.spec)
        #expect(pod.restartPolicy == "Never")
        #expect(pod.automountServiceAccountToken == false)
        #expect(pod.securityContext?.runAsNonRoot == true)
        #expect(pod.securityContext?.seccompProfile?.type == "RuntimeDefault")
        #expect(pod.nodeSelector == ["cloudscan.io/pool": "scanners"])
        #expect(pod.tolerations?.first?.key == "cloudscan.io/scanners")
        #expect(pod.volumes?.first?.emptyDir?.sizeLimit == "2048Mi")
        let container = try #require(pod.containers?.first)
        #expect(container.image == "ghcr.io/cloudscan/runner-sast:0.1.0", "both types share that image")
        #expect(container.resources?.requests == ["cpu": "750m", "memory": "640Mi"], "summed over the types")
        #expect(container.securityContext?.readOnlyRootFilesystem == true)
        #expect(container.securityContext?.allowPrivilegeEscalation == false)
        #expect(container.securityContext?.capabilities?.drop == ["ALL"])
        let env = Dictionary(uniqueKeysWithValues: (container.env ?? []).map { ($0.name, $0) })
        #expect(env["CLOUDSCAN_SCAN_TYPES"]?.value == "sast,secrets")
        #expect(env["CLOUDSCAN_RUNNER_TOKEN"]?.value == nil, "never a plain value")
        #expect(env["CLOUDSCAN_RUNNER_TOKEN"]?.valueFrom?.secretKeyRef?.name == job.metadata.name)
        #expect(env["CLOUDSCAN_ARTIFACT_URL"]?.valueFrom?.secretKeyRef?.key == "artifact-url")
        #expect(env["CLOUDSCAN_BROKER_URL"]?.valueFrom?.secretKeyRef?.name == "cloudscan-runner-broker")
        #expect(env["CLOUDSCAN_ARTIFACT_SHA256"]?.valueFrom?.secretKeyRef?.key == "artifact-sha256")
        let manifest = String(decoding: try Self.configured.manifest(Self.assignment()), as: UTF8.self)
        #expect(
            !manifest.contains("v1.runner-token") && !manifest.contains("sig=abc"), "credentials stay in the Secret")
        let secret = Self.configured.secret(Self.assignment())
        #expect(secret.value("runner-token") == "v1.runner-token")
        #expect(secret.metadata.name == job.metadata.name)
        // Types with different images run on the default runner image.
        #expect(
            Self.configured.job(Self.assignment([.sast, .iac])).spec?.template.spec?.containers?.first?.image
                == "ghcr.io/cloudscan/runner:0.1.0")
        #expect(
            Self.configured.job(Self.assignment([.iac])).spec?.template.spec?.containers?.first?.imagePullPolicy
                == "Always")
    }

    /// Every manifest shape the builder emits, against the official schemas (kubernetes-validate,
    /// strict: an unknown field fails), for the newest Kubernetes it bundles and an older one.
    @Test("emitted manifests pass kubernetes-validate --strict (1.37 and 1.30); a bad one fails it")
    func schemaValidation() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("manifests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let plain = JobSpecBuilder(configuration: .init(namespace: "cloudscan"))
        var files: [String] = []
        let cases: [(String, Data)] = [
            ("job-default.json", try plain.manifest(Self.assignment())),
            (
                "job-profiles.json",
                try Self.configured.manifest(
                    Self.assignment([.sast, .secrets], sha: String(repeating: "b", count: 64)))
            ),
            ("job-mixed.json", try Self.configured.manifest(Self.assignment([.sast, .iac, .sca], attempt: 7))),
            ("secret.json", try KubernetesClient.encoder.encode(Self.configured.secret(Self.assignment()))),
        ]
        for (name, data) in cases {
            let url = directory.appendingPathComponent(name)
            try data.write(to: url)
            files.append(url.path)
        }
        let validator = TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/kubernetes-validate").path
        for version in ["1.37.0", "1.30.0"] {
            let (status, output) = try await runCommandCapturingOutput([validator, "--strict", "-k", version] + files)
            print("kubernetes-validate \(version):\n\(output)")
            #expect(status == 0, "kubernetes-validate \(version):\n\(output)")
            #expect(output.components(separatedBy: "passed").count - 1 == files.count, "\(output)")
        }
        // The check can fail: a misspelt field is refused under --strict.
        var broken = try JSONSerialization.jsonObject(with: cases[0].1) as! [String: Any]
        var spec = broken["spec"] as! [String: Any]
        spec["backofLimit"] = 0
        broken["spec"] = spec
        let bad = directory.appendingPathComponent("job-broken.json")
        try JSONSerialization.data(withJSONObject: broken).write(to: bad)
        let (status, output) = try await runCommandCapturingOutput([validator, "--strict", "-k", "1.37.0", bad.path])
        #expect(status != 0, "\(output)")
        #expect(output.contains("backofLimit"), "\(output)")
    }
}

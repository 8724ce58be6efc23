import CloudScanCore
import Foundation

/// What a runner needs to scan one attempt of one scan.
public struct RunnerAssignment: Sendable, Equatable {
    public var scanID: UUID
    public var organizationID: UUID
    public var attempt: Int
    public var scanTypes: [ScanType]
    /// Where the runner fetches the archive (https or file URL; a presigned URL is a credential).
    public var artifactURL: String
    public var artifactSHA256: String?
    public var timeoutSeconds: Int
    /// The per-scan HMAC the findings and status writers check (minted by the dispatcher).
    public var runnerToken: String
    /// The W3C trace the runner continues (`TRACEPARENT`).
    public var traceparent: String?
    /// The project's scanner options (JSON, `CLOUDSCAN_SCANNER_OPTIONS`).
    public var scannerOptions: String?

    public init(
        scanID: UUID, organizationID: UUID, attempt: Int, scanTypes: [ScanType], artifactURL: String,
        artifactSHA256: String? = nil, timeoutSeconds: Int, runnerToken: String, traceparent: String? = nil,
        scannerOptions: String? = nil
    ) {
        self.traceparent = traceparent
        self.scannerOptions = scannerOptions
        self.scanID = scanID
        self.organizationID = organizationID
        self.attempt = attempt
        self.scanTypes = scanTypes
        self.artifactURL = artifactURL
        self.artifactSHA256 = artifactSHA256
        self.timeoutSeconds = timeoutSeconds
        self.runnerToken = runnerToken
    }

    /// The deterministic name of this attempt's Job (and of its Secret): `cloudscan-<scan id, 32
    /// hex>-<attempt>`, at most 10 + 32 + 1 + 10 characters, so it (and the `job-name` label the
    /// server derives from it) stays within DNS-1123's 63. The whole id, not a prefix: two scans
    /// sharing a prefix would otherwise share a Job, and the second create's 409 would look like
    /// success.
    public var jobName: String { Self.jobName(scanID: scanID, attempt: attempt) }

    public static func jobName(scanID: UUID, attempt: Int) -> String {
        "cloudscan-\(scanID.uuidString.lowercased().replacingOccurrences(of: "-", with: ""))-\(attempt)"
    }

    /// The environment a runner reads (the local process backend sets the same names).
    public enum Environment {
        public static let scanID = "CLOUDSCAN_SCAN_ID"
        public static let organizationID = "CLOUDSCAN_ORGANIZATION_ID"
        public static let attempt = "CLOUDSCAN_ATTEMPT"
        public static let scanTypes = "CLOUDSCAN_SCAN_TYPES"
        public static let artifactURL = "CLOUDSCAN_ARTIFACT_URL"
        public static let artifactSHA256 = "CLOUDSCAN_ARTIFACT_SHA256"
        public static let timeoutSeconds = "CLOUDSCAN_TIMEOUT_SECONDS"
        public static let runnerToken = "CLOUDSCAN_RUNNER_TOKEN"
        public static let brokerURL = "CLOUDSCAN_BROKER_URL"
        public static let traceparent = "TRACEPARENT"
        public static let scannerOptions = "CLOUDSCAN_SCANNER_OPTIONS"
    }
}

/// Builds the batch/v1 Job (and its Secret) for a runner assignment.
public struct JobSpecBuilder: Sendable {
    /// Image and resources for one scan type.
    public struct Profile: Sendable, Equatable {
        public var image: String
        public var pullPolicy: String
        /// CPU in millicores, memory in MiB.
        public var cpuRequest: Int
        public var cpuLimit: Int
        public var memoryRequestMiB: Int
        public var memoryLimitMiB: Int

        public init(
            image: String, pullPolicy: String = "IfNotPresent", cpuRequest: Int = 250, cpuLimit: Int = 1000,
            memoryRequestMiB: Int = 256, memoryLimitMiB: Int = 1024
        ) {
            self.image = image
            self.pullPolicy = pullPolicy
            self.cpuRequest = cpuRequest
            self.cpuLimit = cpuLimit
            self.memoryRequestMiB = memoryRequestMiB
            self.memoryLimitMiB = memoryLimitMiB
        }
    }

    public struct Configuration: Sendable, Equatable {
        public var namespace: String
        /// The runner image with every scanner, used when a scan's types have different images.
        public var defaultProfile: Profile
        public var profiles: [ScanType: Profile]
        /// Finished Jobs (and, through the owner reference, their Secrets) are deleted after this.
        public var ttlSecondsAfterFinished: Int
        /// The emptyDir scratch volume (the root filesystem is read-only).
        public var scratchSizeLimitMiB: Int
        /// Extra seconds past the scan's timeout before Kubernetes kills the pod (the runner
        /// reports its own timeout first).
        public var deadlineGraceSeconds: Int
        public var nodeSelector: [String: String]
        public var tolerations: [Toleration]
        /// The Secret (and key) holding the broker URL runners publish to (it carries credentials).
        public var brokerSecretName: String
        public var brokerSecretKey: String
        public var runAsUser: Int
        public var serviceAccountName: String?

        public init(
            namespace: String = "cloudscan",
            defaultProfile: Profile = Profile(
                image: "ghcr.io/cloudscan/runner:0.1.0", cpuLimit: 2000, memoryLimitMiB: 2048),
            profiles: [ScanType: Profile] = [:], ttlSecondsAfterFinished: Int = 3600, scratchSizeLimitMiB: Int = 2048,
            deadlineGraceSeconds: Int = 60, nodeSelector: [String: String] = [:], tolerations: [Toleration] = [],
            brokerSecretName: String = "cloudscan-runner-broker", brokerSecretKey: String = "url",
            runAsUser: Int = 65532, serviceAccountName: String? = nil
        ) {
            self.namespace = namespace
            self.defaultProfile = defaultProfile
            self.profiles = profiles
            self.ttlSecondsAfterFinished = ttlSecondsAfterFinished
            self.scratchSizeLimitMiB = scratchSizeLimitMiB
            self.deadlineGraceSeconds = deadlineGraceSeconds
            self.nodeSelector = nodeSelector
            self.tolerations = tolerations
            self.brokerSecretName = brokerSecretName
            self.brokerSecretKey = brokerSecretKey
            self.runAsUser = runAsUser
            self.serviceAccountName = serviceAccountName
        }
    }

    public enum Label {
        public static let managedBy = "app.kubernetes.io/managed-by"
        public static let name = "app.kubernetes.io/name"
        public static let scanID = "cloudscan.io/scan-id"
        public static let organizationID = "cloudscan.io/organization-id"
        public static let attempt = "cloudscan.io/attempt"
    }

    /// Selects every Job cloudscan created.
    public static let managedSelector = "\(Label.managedBy)=cloudscan"

    public var configuration: Configuration

    public init(configuration: Configuration = .init()) { self.configuration = configuration }

    public func labels(_ assignment: RunnerAssignment) -> [String: String] {
        [
            Label.managedBy: "cloudscan",
            Label.name: "cloudscan-runner",
            Label.scanID: assignment.scanID.uuidString.lowercased(),
            Label.organizationID: assignment.organizationID.uuidString.lowercased(),
            Label.attempt: String(assignment.attempt),
        ]
    }

    /// The profile for a scan's types: theirs if they share one image (resources summed), else the
    /// default runner image.
    public func profile(for scanTypes: [ScanType]) -> Profile {
        let chosen = scanTypes.compactMap { configuration.profiles[$0] }
        guard chosen.count == scanTypes.count, let first = chosen.first,
            chosen.allSatisfy({ $0.image == first.image && $0.pullPolicy == first.pullPolicy })
        else { return configuration.defaultProfile }
        var sum = first
        for other in chosen.dropFirst() {
            sum.cpuRequest += other.cpuRequest
            sum.cpuLimit += other.cpuLimit
            sum.memoryRequestMiB += other.memoryRequestMiB
            sum.memoryLimitMiB += other.memoryLimitMiB
        }
        return sum
    }

    /// The Secret holding the attempt's credentials (runner token, artifact URL): env values
    /// come from it, never as plain text in the Job.
    public func secret(_ assignment: RunnerAssignment) -> Secret {
        var values = ["runner-token": assignment.runnerToken, "artifact-url": assignment.artifactURL]
        if let sha = assignment.artifactSHA256 { values["artifact-sha256"] = sha }
        return Secret(
            metadata: ObjectMeta(
                name: assignment.jobName, namespace: configuration.namespace, labels: labels(assignment)),
            values: values)
    }

    public func job(_ assignment: RunnerAssignment) -> Job {
        let name = assignment.jobName
        let labels = labels(assignment)
        let profile = profile(for: assignment.scanTypes)
        typealias Env = RunnerAssignment.Environment

        var container = Container(name: "runner", image: profile.image)
        container.imagePullPolicy = profile.pullPolicy
        container.command = ["cloudscan", "runner"]
        container.workingDir = "/scratch"
        var env = [
            EnvVar(name: Env.scanID, value: assignment.scanID.uuidString.lowercased()),
            EnvVar(name: Env.organizationID, value: assignment.organizationID.uuidString.lowercased()),
            EnvVar(name: Env.attempt, value: String(assignment.attempt)),
            EnvVar(name: Env.scanTypes, value: assignment.scanTypes.map(\.rawValue).joined(separator: ",")),
            EnvVar(name: Env.timeoutSeconds, value: String(assignment.timeoutSeconds)),
            EnvVar(name: Env.artifactURL, secret: name, key: "artifact-url"),
            EnvVar(name: Env.runnerToken, secret: name, key: "runner-token"),
            EnvVar(
                name: Env.brokerURL, secret: configuration.brokerSecretName, key: configuration.brokerSecretKey),
            EnvVar(name: "HOME", value: "/scratch"),
            EnvVar(name: "TMPDIR", value: "/scratch/tmp"),
        ]
        if assignment.artifactSHA256 != nil {
            env.append(EnvVar(name: Env.artifactSHA256, secret: name, key: "artifact-sha256"))
        }
        if let traceparent = assignment.traceparent {
            env.append(EnvVar(name: Env.traceparent, value: traceparent))
        }
        if let options = assignment.scannerOptions {
            env.append(EnvVar(name: Env.scannerOptions, value: options))
        }
        container.env = env
        container.resources = ResourceRequirements(
            requests: ["cpu": "\(profile.cpuRequest)m", "memory": "\(profile.memoryRequestMiB)Mi"],
            limits: [
                "cpu": "\(profile.cpuLimit)m", "memory": "\(profile.memoryLimitMiB)Mi",
                "ephemeral-storage": "\(configuration.scratchSizeLimitMiB)Mi",
            ])
        var security = SecurityContext()
        security.allowPrivilegeEscalation = false
        security.privileged = false
        security.readOnlyRootFilesystem = true
        security.runAsNonRoot = true
        security.capabilities = Capabilities(drop: ["ALL"])
        security.seccompProfile = SeccompProfile(type: "RuntimeDefault")
        container.securityContext = security
        container.volumeMounts = [VolumeMount(name: "scratch", mountPath: "/scratch")]

        var pod = PodSpec(containers: [container])
        pod.restartPolicy = "Never"
        pod.automountServiceAccountToken = false
        pod.enableServiceLinks = false
        pod.serviceAccountName = configuration.serviceAccountName
        pod.terminationGracePeriodSeconds = 30
        pod.securityContext = PodSecurityContext(
            runAsNonRoot: true, runAsUser: configuration.runAsUser, runAsGroup: configuration.runAsUser,
            fsGroup: configuration.runAsUser, seccompProfile: SeccompProfile(type: "RuntimeDefault"))
        pod.volumes = [
            Volume(name: "scratch", emptyDir: EmptyDirVolumeSource(sizeLimit: "\(configuration.scratchSizeLimitMiB)Mi"))
        ]
        pod.nodeSelector = configuration.nodeSelector.isEmpty ? nil : configuration.nodeSelector
        pod.tolerations = configuration.tolerations.isEmpty ? nil : configuration.tolerations

        return Job(
            metadata: ObjectMeta(name: name, namespace: configuration.namespace, labels: labels),
            spec: JobSpec(
                backoffLimit: 0,  // cloudscan owns retries
                activeDeadlineSeconds: assignment.timeoutSeconds + configuration.deadlineGraceSeconds,
                ttlSecondsAfterFinished: configuration.ttlSecondsAfterFinished,
                template: PodTemplateSpec(metadata: ObjectMeta(labels: labels), spec: pod)))
    }

    /// The Job as JSON (what the dispatcher POSTs; also what the schema check validates).
    public func manifest(_ assignment: RunnerAssignment) throws -> Data {
        try KubernetesClient.encoder.encode(job(assignment))
    }
}

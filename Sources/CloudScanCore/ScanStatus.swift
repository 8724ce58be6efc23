/// Where a scan is in its lifecycle.
///
/// `queued → dispatched → running → completed | failed | canceled`; `retrying` leads back to
/// `dispatched`. Timing out is a failure reason, not a state.
public enum ScanStatus: String, Sendable, CaseIterable, Codable, Hashable {
    case queued
    case dispatched
    case running
    case retrying
    case completed
    case failed
    case canceled

    /// No transition leaves a final state.
    public var isFinal: Bool {
        switch self {
        case .completed, .failed, .canceled: return true
        case .queued, .dispatched, .running, .retrying: return false
        }
    }
}

/// Severity of a finding, from most to least severe.
public enum Severity: String, Sendable, CaseIterable, Codable, Hashable, Comparable {
    case critical
    case high
    case medium
    case low
    case info

    /// 4 for critical … 0 for info.
    public var rank: Int {
        switch self {
        case .critical: return 4
        case .high: return 3
        case .medium: return 2
        case .low: return 1
        case .info: return 0
        }
    }

    public static func < (lhs: Severity, rhs: Severity) -> Bool { lhs.rank < rhs.rank }
}

/// The kinds of scan the runner knows.
public enum ScanType: String, Sendable, CaseIterable, Codable, Hashable {
    case sast
    case secrets
    case iac
    case sca
}

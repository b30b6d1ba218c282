//! Scaling a policy's target: read its replicas, hold them while a HorizontalPodAutoscaler also scales it or usage
//! is unknown, and write the stabilized recommendation when it differs.

use jiff::{SignedDuration, Timestamp};

use super::check::CheckedScaling;
use super::cycle::Cycle;
use super::events::publish;
use super::{CONTROLLER, Context, PolicyState, condition, keys, scale, status};
use crate::api::common::Time;
use crate::api::ratelimit::{RateLimitPolicy, RateLimitPolicyStatus, Scaling};
use crate::conditions::Desired;
use crate::events::EventType;
use crate::scaling;
use crate::usage::Rates;

/// Reads the target's replicas, looks for a competing HPA, and writes a new replica count when the stabilized
/// recommendation differs. Every outcome is recorded in `cycle`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn scale_target(
    ctx: &Context,
    policy: &RateLimitPolicy,
    ns: &str,
    spec: &Scaling,
    s: &CheckedScaling,
    state: &mut PolicyState,
    rates: Option<&Rates>,
    current: &RateLimitPolicyStatus,
    now: Timestamp,
    cycle: &mut Cycle,
) {
    use condition::{SCALING_ACTIVE, SCALING_CONFLICT};
    let target = &spec.target_ref;
    let what = format!("{} {}", target.kind, target.name);
    cycle.last_scale_time = current.last_scale_time.clone();
    cycle.desired_replicas = current.desired_replicas;
    let fail = |cycle: &mut Cycle, e: scale::ScaleError| {
        cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, e.reason(), e.to_string()));
        cycle.conditions.push(Desired::new(
            SCALING_CONFLICT,
            false,
            "NoConflict",
            "no HorizontalPodAutoscaler targets it",
        ));
    };
    let ar = match ctx.resolve(target).await {
        Ok(ar) => ar,
        Err(e) => return fail(cycle, e),
    };
    let replicas = match scale::read(&ctx.client, &ar, ns, &target.name).await {
        Ok(r) => r,
        Err(e) => {
            if e.invalidates_discovery() {
                ctx.forget(target);
            }
            return fail(cycle, e);
        }
    };
    cycle.current_replicas = Some(replicas);
    if let Some(total) = rates.map(|r| r.values().sum::<f64>())
        && replicas > 0
    {
        cycle.utilization = Some(status::round2(total / (f64::from(replicas) * s.capacity_rps)));
    }

    match scale::competing_hpa(&ctx.client, ns, target).await {
        Ok(Some(hpa)) => {
            let message = format!(
                "HorizontalPodAutoscaler {hpa} also scales {what}; Keyward does not write its replicas while it exists"
            );
            if !keys::is_true(&current.conditions, SCALING_CONFLICT) {
                publish(ctx, policy, EventType::Warning, "ScalingConflict", message.clone()).await;
            }
            cycle.conditions.push(Desired::new(SCALING_CONFLICT, true, "HorizontalPodAutoscaler", message.clone()));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "ScalingConflict", message));
            return;
        }
        Ok(None) => {
            cycle.conditions.push(Desired::new(
                SCALING_CONFLICT,
                false,
                "NoConflict",
                "no HorizontalPodAutoscaler targets it",
            ));
        }
        Err(e) => {
            // Not knowing is treated as a conflict: no writes until the check succeeds.
            let message = format!("cannot check for a HorizontalPodAutoscaler on {what}, so replicas are held: {e}");
            cycle.conditions.push(Desired::new(SCALING_CONFLICT, false, "CheckFailed", message.clone()));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "CheckFailed", message));
            return;
        }
    }

    let Some(rates) = rates else {
        cycle.conditions.push(Desired::new(
            SCALING_ACTIVE,
            false,
            "UsageUnavailable",
            format!("replicas held at {replicas}: no usage data, and missing data never scales down"),
        ));
        return;
    };
    let total: f64 = rates.values().sum();
    let raw = match scaling::raw_recommendation(total, s.capacity_rps, s.target_utilization) {
        Ok(r) => r,
        Err(e) => {
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, "InvalidSpec", e.to_string()));
            return;
        }
    };
    let clamped = scaling::clamp_replicas(raw, s.min, s.max);
    if !state.seeded {
        // NB: seeded just before now, so the up window (default 0 s) does not see it.
        state.stabilizer.recommend(
            now.checked_sub(SignedDuration::from_millis(1)).unwrap_or(now),
            replicas,
            replicas,
            s.up_window,
            s.down_window,
        );
        state.seeded = true;
    }
    let desired = state.stabilizer.recommend(now, clamped, replicas, s.up_window, s.down_window);
    cycle.desired_replicas = Some(desired);
    let why = format!(
        "{total:.2} req/s at {}% of {:.2} req/s per replica needs {raw} (bounds {}..={})",
        s.target_utilization, s.capacity_rps, s.min, s.max
    );
    if desired == replicas {
        let held =
            if clamped == replicas { why } else { format!("{why}; held at {replicas} by the stabilization window") };
        cycle.conditions.push(Desired::new(SCALING_ACTIVE, true, "Stable", held));
        return;
    }
    ctx.metrics.api_write(CONTROLLER, "Scale");
    match scale::write(&ctx.client, &ar, ns, &target.name, desired).await {
        Ok(()) => {
            let (reason, verb) = if desired > replicas { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
            let note = format!("scaled {what} {verb} from {replicas} to {desired}: {why}");
            tracing::info!(target = %what, from = replicas, to = desired, total_rps = total, "scaled");
            publish(ctx, policy, EventType::Normal, reason, note.clone()).await;
            cycle.current_replicas = Some(desired);
            cycle.last_scale_time = Some(Time(now));
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, true, reason, note));
        }
        Err(e) => {
            cycle.conditions.push(Desired::new(SCALING_ACTIVE, false, e.reason(), e.to_string()));
        }
    }
}

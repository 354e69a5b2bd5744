use proptest::prelude::*;

use super::*;

fn k(name: &str) -> FeatureKey {
    FeatureKey::new("portal", name)
}

fn caller(name: &str, weight: u32, replicas: u32) -> Caller {
    Caller {
        key: k(name),
        weight,
        replicas,
    }
}

fn requests(n: u32) -> Limits {
    Limits {
        max_requests: Some(n),
        ..Limits::default()
    }
}

fn per_instance(split: &[Share]) -> Vec<Option<u32>> {
    split.iter().map(|s| s.per_instance.max_requests).collect()
}

fn shares(split: &[Share]) -> Vec<Option<u32>> {
    split.iter().map(|s| s.share.max_requests).collect()
}

#[test]
fn equal_weights_share_the_capacity_and_replicas_divide_each_share() {
    let callers = [caller("a", 1, 2), caller("b", 1, 5), caller("c", 1, 1)];
    let split = split(&requests(300), &callers, &[]);
    assert_eq!(shares(&split), [Some(100), Some(100), Some(100)]);
    assert_eq!(per_instance(&split), [Some(50), Some(20), Some(100)]);
    // Unset limits are not split.
    assert!(
        split
            .iter()
            .all(|s| s.per_instance.max_connections.is_none())
    );
}

#[test]
fn weights_set_the_shares_and_the_remainder_goes_by_largest_fraction() {
    let callers = [caller("a", 1, 1), caller("b", 2, 1), caller("c", 2, 1)];
    let split = split(&requests(11), &callers, &[]);
    // 11 × 1/5 = 2.2, 11 × 2/5 = 4.4 twice: the one left over goes to b (earliest of the
    // largest fractions).
    assert_eq!(shares(&split), [Some(2), Some(5), Some(4)]);
}

#[test]
fn a_caller_without_replicas_takes_no_share() {
    let callers = [caller("a", 1, 0), caller("b", 1, 3)];
    let split = split(&requests(90), &callers, &[]);
    assert_eq!(shares(&split), [Some(0), Some(90)]);
    assert_eq!(per_instance(&split), [Some(1), Some(30)]);
}

#[test]
fn an_instance_gets_at_least_one_even_when_the_share_is_smaller_than_the_replicas() {
    let callers = [caller("a", 1, 8), caller("b", 1, 1)];
    let split = split(&requests(6), &callers, &[]);
    assert_eq!(per_instance(&split), [Some(1), Some(3)]);
    // 8 × 1 + 3 = 11 > 6: over by what the floor adds (8 - 3).
    assert_eq!(bound(6, &[3, 3], &[8, 1]), 11);
}

#[test]
fn scaling_one_caller_rewrites_that_caller_only() {
    let capacity = requests(300);
    let before = split(
        &capacity,
        &[caller("a", 1, 2), caller("b", 1, 5), caller("c", 1, 1)],
        &[],
    );
    let after = split(
        &capacity,
        &[caller("a", 1, 3), caller("b", 1, 5), caller("c", 1, 1)],
        &before,
    );
    assert_eq!(per_instance(&after), [Some(33), Some(20), Some(100)]);
}

#[test]
fn a_small_scale_down_keeps_the_previous_limit() {
    let capacity = requests(1000);
    let before = split(&capacity, &[caller("a", 1, 11), caller("b", 1, 1)], &[]);
    assert_eq!(per_instance(&before), [Some(45), Some(500)]);
    // 10 replicas: fresh 50, 45 is within 10% and lower, so kept.
    let after = split(&capacity, &[caller("a", 1, 10), caller("b", 1, 1)], &before);
    assert_eq!(per_instance(&after), [Some(45), Some(500)]);
    // 5 replicas: fresh 100, too far: rewritten.
    let far = split(&capacity, &[caller("a", 1, 5), caller("b", 1, 1)], &after);
    assert_eq!(per_instance(&far), [Some(100), Some(500)]);
}

#[test]
fn a_kept_higher_limit_must_still_fit() {
    let capacity = requests(100);
    // a at 52 per instance was fine with 1 replica out of a share of 52 (weights 52:48)...
    let previous = vec![Share {
        key: k("a"),
        weight: 1,
        replicas: 1,
        share: requests(50),
        per_instance: requests(52),
    }];
    // ...but not with b taking its full 50: 52 + 50 > 100.
    let after = split(
        &capacity,
        &[caller("a", 1, 1), caller("b", 1, 1)],
        &previous,
    );
    assert_eq!(per_instance(&after), [Some(50), Some(50)]);
}

#[test]
fn the_policy_stays_a_ceiling() {
    let split = Limits {
        max_connections: Some(10),
        max_requests: Some(40),
        ..Limits::default()
    };
    let policy = Limits {
        max_requests: Some(25),
        max_pending_requests: Some(7),
        ..Limits::default()
    };
    let both = split.ceiling(&policy);
    assert_eq!(
        (
            both.max_connections,
            both.max_pending_requests,
            both.max_requests
        ),
        (Some(10), Some(7), Some(25))
    );
}

#[test]
fn the_status_reads_back_as_the_split() {
    let callers = [
        caller("a", 2, 3),
        Caller {
            key: FeatureKey::new("team-a", "b"),
            weight: 1,
            replicas: 1,
        },
    ];
    let capacity = Limits {
        max_connections: Some(30),
        max_pending_requests: Some(9),
        max_requests: Some(60),
    };
    let split = split(&capacity, &callers, &[]);
    let status = to_status(&split, "portal");
    assert_eq!(status.callers[1].name, "team-a/b");
    assert_eq!(from_status(&status, "portal"), split);
}

#[test]
fn a_caller_deciding_its_own_scale_up_counts_its_new_replicas() {
    let inputs = CapacityInputs {
        capacity: requests(100),
        callers: vec![caller("a", 1, 0), caller("b", 1, 1)],
        previous: vec![],
    };
    let split = inputs.split_for(&k("a"), 2);
    assert_eq!(per_instance(&split), [Some(25), Some(50)]);
}

fn callers_strategy() -> impl Strategy<Value = Vec<Caller>> {
    prop::collection::vec((0u32..6, 1u32..5, 0u32..40), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(n, weight, replicas)| caller(&format!("c{n}"), weight, replicas))
            .collect()
    })
}

fn capacity_strategy() -> impl Strategy<Value = Limits> {
    (
        prop::option::of(1u32..2000),
        prop::option::of(1u32..50),
        prop::option::of(1u32..1_000_000),
    )
        .prop_map(|(c, p, r)| Limits {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
        })
}

/// Checks the invariant of one split for every set limit.
fn check_invariant(capacity: &Limits, split: &[Share]) -> Result<(), TestCaseError> {
    for dim in 0..3 {
        let Some(cap) = capacity.get()[dim] else {
            continue;
        };
        let s: Vec<u64> = split
            .iter()
            .map(|x| u64::from(x.share.get()[dim].unwrap()))
            .collect();
        let r: Vec<u64> = split.iter().map(|x| u64::from(x.replicas)).collect();
        let used: u64 = split
            .iter()
            .map(|x| u64::from(x.per_instance.get()[dim].unwrap()) * u64::from(x.replicas))
            .sum();
        prop_assert!(
            used <= bound(u64::from(cap), &s, &r),
            "{used} over {cap}: {split:?}"
        );
        if s.iter().zip(&r).all(|(s, r)| s >= r) {
            prop_assert!(
                used <= u64::from(cap),
                "{used} over {cap} without the floor"
            );
        }
        if r.iter().any(|r| *r > 0) {
            prop_assert_eq!(s.iter().sum::<u64>(), u64::from(cap));
        }
        for x in split {
            prop_assert!(x.per_instance.get()[dim].unwrap() >= 1);
            if x.replicas == 0 {
                prop_assert_eq!(x.share.get()[dim], Some(0));
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_split_never_exceeds_the_capacity_but_for_the_floor(
        capacity in capacity_strategy(),
        callers in callers_strategy(),
    ) {
        check_invariant(&capacity, &split(&capacity, &callers, &[]))?;
    }

    #[test]
    fn the_split_does_not_depend_on_the_order_of_the_callers(
        capacity in capacity_strategy(),
        callers in callers_strategy(),
        previous_callers in callers_strategy(),
    ) {
        let previous = split(&capacity, &previous_callers, &[]);
        let mut reversed = callers.clone();
        reversed.reverse();
        // Duplicates: the first of each key wins, so reversing changes which; take one each.
        let mut unique = callers.clone();
        unique.sort_by(|a, b| a.key.cmp(&b.key));
        unique.dedup_by(|a, b| a.key == b.key);
        let mut shuffled = unique.clone();
        shuffled.rotate_left(unique.len() / 2);
        prop_assert_eq!(
            split(&capacity, &unique, &previous),
            split(&capacity, &shuffled, &previous)
        );
    }

    #[test]
    fn hysteresis_never_breaks_the_invariant_and_settles_at_once(
        capacity in capacity_strategy(),
        steps in prop::collection::vec(callers_strategy(), 1..8),
    ) {
        let mut previous = Vec::new();
        for callers in steps {
            let next = split(&capacity, &callers, &previous);
            check_invariant(&capacity, &next)?;
            // Every caller that splits again with this as the previous split gets the same.
            prop_assert_eq!(&split(&capacity, &callers, &next), &next);
            previous = next;
        }
    }

    #[test]
    fn any_previous_split_keeps_the_invariant(
        capacity in capacity_strategy(),
        callers in callers_strategy(),
        previous in prop::collection::vec(
            (0u32..6, prop::option::of(0u32..3000), prop::option::of(0u32..3000)),
            0..6,
        ),
    ) {
        let previous: Vec<Share> = previous
            .into_iter()
            .map(|(n, c, r)| Share {
                key: k(&format!("c{n}")),
                weight: 1,
                replicas: 1,
                share: Limits::default(),
                per_instance: Limits { max_connections: c, max_pending_requests: c, max_requests: r },
            })
            .collect();
        check_invariant(&capacity, &split(&capacity, &callers, &previous))?;
    }

    #[test]
    fn small_replica_changes_of_one_caller_leave_the_others_alone(
        capacity in capacity_strategy(),
        callers in callers_strategy(),
        which in 0usize..6,
        delta in 1u32..3,
    ) {
        let before = split(&capacity, &callers, &[]);
        prop_assume!(!before.is_empty());
        let which = which % before.len();
        prop_assume!(before[which].replicas > 0);
        let changed: Vec<Caller> = before
            .iter()
            .enumerate()
            .map(|(i, s)| Caller {
                key: s.key.clone(),
                weight: s.weight,
                replicas: if i == which { s.replicas + delta } else { s.replicas },
            })
            .collect();
        let after = split(&capacity, &changed, &before);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if i != which {
                prop_assert_eq!(b.per_instance, a.per_instance);
            }
        }
    }
}

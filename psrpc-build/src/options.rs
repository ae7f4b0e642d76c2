//! The psrpc method options (`psrpc/options.proto`, extension 2198 on
//! `google.protobuf.MethodOptions`) and what they resolve to.

/// Field number of the `psrpc.options` extension on `google.protobuf.MethodOptions`.
pub(crate) const EXTENSION_NUMBER: u32 = 2198;

/// The `options.proto` shipped with this crate (identical to Go psrpc's).
pub(crate) const OPTIONS_PROTO: &str = include_str!("../proto/psrpc/options.proto");

/// `psrpc.Options` as it is encoded (hand-written prost mirror of options.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OptionsProto {
    #[prost(bool, tag = "1")]
    pub(crate) subscription: bool,
    #[prost(bool, tag = "2")]
    pub(crate) topics: bool,
    #[prost(message, optional, tag = "3")]
    pub(crate) topic_params: Option<TopicParamOptionsProto>,
    #[prost(bool, tag = "4")]
    pub(crate) stream: bool,
    #[prost(int32, tag = "8")]
    pub(crate) r#type: i32,
    #[prost(oneof = "DeprecatedRouting", tags = "5, 6, 7")]
    pub(crate) routing: Option<DeprecatedRouting>,
}

/// `psrpc.TopicParamOptions`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TopicParamOptionsProto {
    #[prost(string, tag = "1")]
    pub(crate) group: String,
    #[prost(string, repeated, tag = "2")]
    pub(crate) names: Vec<String>,
    #[prost(bool, tag = "3")]
    pub(crate) typed: bool,
    #[prost(bool, tag = "4")]
    pub(crate) single_server: bool,
}

/// The deprecated `oneof routing` of `psrpc.Options`: presence decides, not
/// the value (as in Go: `multi = false` still selects MULTI).
#[derive(Clone, Copy, PartialEq, Eq, prost::Oneof)]
pub(crate) enum DeprecatedRouting {
    #[prost(bool, tag = "5")]
    Multi(bool),
    #[prost(bool, tag = "6")]
    AffinityFunc(bool),
    #[prost(bool, tag = "7")]
    Queue(bool),
}

/// How requests of a method are routed (`psrpc.Routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routing {
    /// One server, picked by the bus queue (and the claim handshake).
    Queue,
    /// One server, picked by the client from the servers' affinity scores.
    Affinity,
    /// Every server.
    Multi,
}

/// The resolved options of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodOptions {
    pub(crate) subscription: bool,
    pub(crate) stream: bool,
    pub(crate) topics: bool,
    pub(crate) routing: Routing,
    /// `topic_params.names`, in order (empty: one `topic` parameter when `topics`).
    pub(crate) topic_names: Vec<String>,
    pub(crate) typed: bool,
    pub(crate) group: String,
    pub(crate) single_server: bool,
    /// Whether `topic_params` was given at all.
    pub(crate) has_topic_params: bool,
    /// Whether `type` holds a value outside the `Routing` enum.
    pub(crate) unknown_type: Option<i32>,
}

impl MethodOptions {
    /// The options of a method without a psrpc option: a queue-routed unary method.
    pub(crate) fn none() -> Self {
        Self::resolve(&OptionsProto::default())
    }

    /// Resolves the routing as Go does: a member of the deprecated oneof,
    /// when present, overrides `type`.
    pub(crate) fn resolve(o: &OptionsProto) -> Self {
        let (routing, unknown_type) = match o.routing {
            Some(DeprecatedRouting::Multi(_)) => (Routing::Multi, None),
            Some(DeprecatedRouting::AffinityFunc(_)) => (Routing::Affinity, None),
            Some(DeprecatedRouting::Queue(_)) => (Routing::Queue, None),
            None => match o.r#type {
                0 => (Routing::Queue, None),
                1 => (Routing::Affinity, None),
                2 => (Routing::Multi, None),
                n => (Routing::Queue, Some(n)),
            },
        };
        let tp = o.topic_params.clone().unwrap_or_default();
        MethodOptions {
            subscription: o.subscription,
            stream: o.stream,
            topics: o.topics,
            routing,
            topic_names: tp.names,
            typed: tp.typed,
            group: tp.group,
            single_server: tp.single_server,
            has_topic_params: o.topic_params.is_some(),
            unknown_type,
        }
    }

    /// Why these options cannot be generated, and how to fix them (`None`: valid).
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(n) = self.unknown_type {
            return Some(format!(
                "`type = {n}` is not a psrpc.Routing value; use QUEUE, AFFINITY or MULTI"
            ));
        }
        if self.subscription && self.stream {
            return Some(
                "a method cannot be both a subscription and a stream; \
                 set either `subscription = true` or `stream = true`, not both"
                    .into(),
            );
        }
        if self.subscription && self.routing == Routing::Affinity {
            return Some(
                "a subscription has no affinity function (servers publish, nobody claims); \
                 use `type = QUEUE` (one subscriber gets each update) or `type = MULTI` \
                 (every subscriber gets each update)"
                    .into(),
            );
        }
        if self.subscription && !self.group.is_empty() {
            return Some(format!(
                "topic group \"{}\" on a subscription: groups register server handlers, \
                 and subscriptions have none; remove `topic_params.group`",
                self.group
            ));
        }
        if !self.topics && (!self.topic_names.is_empty() || !self.group.is_empty() || self.typed) {
            return Some(
                "`topic_params` names, group or typed are set but `topics` is not; \
                 add `option (psrpc.options).topics = true;` or remove them"
                    .into(),
            );
        }
        if self.typed && self.topic_names.is_empty() {
            return Some(
                "`topic_params.typed = true` needs `topic_params.names` to name the typed \
                 parameters; add names or remove `typed`"
                    .into(),
            );
        }
        for (i, name) in self.topic_names.iter().enumerate() {
            if !crate::naming::is_identifier(name) {
                return Some(format!(
                    "topic parameter name {name:?} is not an identifier; use ASCII letters, \
                     digits and `_`, not starting with a digit"
                ));
            }
            let snake = crate::naming::snake(name);
            if let Some(other) = self.topic_names[..i]
                .iter()
                .find(|o| crate::naming::snake(o) == snake)
            {
                return Some(format!(
                    "topic parameters {other:?} and {name:?} have the same name in Rust \
                     (`{snake}`); rename one"
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: OptionsProto) -> MethodOptions {
        MethodOptions::resolve(&o)
    }

    #[test]
    fn defaults_are_queue_unary() {
        let o = MethodOptions::none();
        assert_eq!(o.routing, Routing::Queue);
        assert!(!o.subscription && !o.stream && !o.topics);
        assert!(!o.single_server);
        assert_eq!(o.problem(), None);
    }

    #[test]
    fn type_selects_routing_and_flags() {
        let affinity = opts(OptionsProto {
            r#type: 1,
            ..Default::default()
        });
        assert_eq!(affinity.routing, Routing::Affinity);
        assert!(!affinity.single_server);
        let multi = opts(OptionsProto {
            r#type: 2,
            ..Default::default()
        });
        assert_eq!(multi.routing, Routing::Multi);
        let single = opts(OptionsProto {
            topic_params: Some(TopicParamOptionsProto {
                single_server: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(single.routing, Routing::Queue);
        assert!(single.single_server);
    }

    #[test]
    fn deprecated_oneof_presence_overrides_type() {
        // As in Go, `multi = false` still selects MULTI: the field is present.
        for (routing, want) in [
            (DeprecatedRouting::Multi(false), Routing::Multi),
            (DeprecatedRouting::Multi(true), Routing::Multi),
            (DeprecatedRouting::AffinityFunc(false), Routing::Affinity),
            (DeprecatedRouting::Queue(true), Routing::Queue),
        ] {
            let o = opts(OptionsProto {
                r#type: 2,
                routing: Some(routing),
                ..Default::default()
            });
            let want = if matches!(routing, DeprecatedRouting::Queue(_)) {
                Routing::Queue
            } else {
                want
            };
            assert_eq!(o.routing, want, "{routing:?}");
        }
    }

    #[test]
    fn decodes_presence_of_a_false_oneof_member() {
        use prost::Message;
        // field 5 (multi), varint 0: present although false.
        let o = OptionsProto::decode(&[0x28, 0x00][..]).unwrap();
        assert_eq!(o.routing, Some(DeprecatedRouting::Multi(false)));
        assert_eq!(MethodOptions::resolve(&o).routing, Routing::Multi);
    }

    #[test]
    fn invalid_combinations_are_explained() {
        let problem = |o: OptionsProto| opts(o).problem().expect("a problem");
        assert!(
            problem(OptionsProto {
                subscription: true,
                stream: true,
                ..Default::default()
            })
            .contains("both a subscription and a stream")
        );
        assert!(
            problem(OptionsProto {
                subscription: true,
                r#type: 1,
                ..Default::default()
            })
            .contains("use `type = QUEUE`")
        );
        assert!(
            problem(OptionsProto {
                topic_params: Some(TopicParamOptionsProto {
                    names: vec!["region".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .contains("topics = true")
        );
        assert!(
            problem(OptionsProto {
                topics: true,
                topic_params: Some(TopicParamOptionsProto {
                    names: vec!["room-name".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .contains("not an identifier")
        );
        assert!(
            problem(OptionsProto {
                topics: true,
                topic_params: Some(TopicParamOptionsProto {
                    names: vec!["roomId".into(), "room_id".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .contains("same name in Rust")
        );
        assert!(
            problem(OptionsProto {
                r#type: 7,
                ..Default::default()
            })
            .contains("not a psrpc.Routing value")
        );
        assert!(
            problem(OptionsProto {
                topics: true,
                topic_params: Some(TopicParamOptionsProto {
                    typed: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .contains("needs `topic_params.names`")
        );
    }

    #[test]
    fn valid_combinations_pass() {
        for o in [
            OptionsProto {
                stream: true,
                r#type: 2,
                ..Default::default()
            },
            OptionsProto {
                stream: true,
                r#type: 1,
                topics: true,
                ..Default::default()
            },
            OptionsProto {
                subscription: true,
                r#type: 2,
                topics: true,
                topic_params: Some(TopicParamOptionsProto {
                    names: vec!["region".into(), "node_id".into()],
                    typed: true,
                    single_server: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            OptionsProto {
                topic_params: Some(TopicParamOptionsProto {
                    single_server: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ] {
            assert_eq!(opts(o.clone()).problem(), None, "{o:?}");
        }
    }
}

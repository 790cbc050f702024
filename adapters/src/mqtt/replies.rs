//! The broker's replies to a session's requests: acknowledgements to the
//! client, SUBACK and UNSUBACK, retained messages, and the steps of
//! resuming a persistent session.

use super::*;

impl MqttSession {
    /// Handles the broker's reply to one of this session's requests.
    pub(super) fn reply(
        &mut self,
        request_id: u32,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let Some(mut pending) = state.pending.remove(&request_id) else {
            return Ok(());
        };
        release_if_empty(&mut state.pending);
        let version = state.version;
        let error = match reply {
            Reply::Error(error) => Some(error),
            _ => None,
        };
        if let Pending::ThenRetain(chained) = pending {
            let (inner, copy) = *chained;
            if let Reply::Published { seq, .. } = reply {
                store_retained(state, copy, *seq, context);
            }
            pending = inner;
        }
        match pending {
            Pending::Fire => {
                if let Some(error) = error {
                    log::debug!(
                        "mqtt {} (client {:?}): a bookkeeping request failed: {error}",
                        context.peer(),
                        state.client_id
                    );
                }
            }
            Pending::Publish0(topic) => {
                if let Some(error) = error {
                    log::debug!(
                        "mqtt {} (client {:?}): QoS 0 publish refused: {error}",
                        context.peer(),
                        state.client_id
                    );
                }
                let _ = index_first(state, reply, TOPIC_INDEX, topic, context);
            }
            Pending::Acknowledge {
                qos,
                packet_id,
                topic,
                arrival,
            } => return self.acknowledge(packet_id, qos, topic, arrival, reply, context),
            Pending::AckAfter(arrival, packet) => {
                if let Some(error) = error {
                    log::warn!("mqtt {}: a topic was not indexed: {error}", context.peer());
                }
                state
                    .qos
                    .acks
                    .answer(arrival, *packet, version, context.out());
            }
            Pending::Subscribe(packet_id, index, subscription, replaced) => {
                let qos = subscription.qos();
                let filter = subscription.filter.clone();
                let shared = subscription.is_shared();
                // An UNSUBSCRIBE (or a SUBSCRIBE replacing it) handled
                // before this answer came: it is not the session's any more
                // (a pattern's answer waits for every shard, and one already
                // held is answered as granted).
                let dropped = !state.subscriptions.contains(&subscription);
                if error.is_none() && !shared && !dropped {
                    // A persistent session's stored subscriptions start at
                    // the head: after a reconnect they resume from there.
                    if let Reply::Subscribed { head_seq } = reply {
                        if state.persistent && qos != QoS::AtMostOnce {
                            let channel: Arc<str> = Arc::from(filter.as_str());
                            if !state.qos.cursors.contains_key(&channel) {
                                state.qos.cursors.insert(channel.clone(), *head_seq);
                                state.write_cursor(channel, *head_seq, context);
                            }
                        }
                    }
                }
                let upgraded = matches!(error, Some(BrokerError::AlreadySubscribed(_)))
                    && !shared
                    && !dropped
                    && state.persistent
                    && qos != QoS::AtMostOnce
                    && !pattern::is_pattern(&filter)
                    && !state.qos.cursors.contains_key(filter.as_str());
                if upgraded {
                    // Followed at QoS 0 until now, without a position: it
                    // starts at the head (or a reconnect would send the
                    // topic's whole history).
                    let pending = Pending::CursorStart(Arc::from(filter.as_str()));
                    let query = HistoryQuery::Last;
                    read_history(
                        state,
                        Reader::Server,
                        pending,
                        filter.clone(),
                        query,
                        1,
                        context,
                    );
                }
                let granted = match error {
                    // Ended: the client's own UNSUBSCRIBE came first.
                    None
                    | Some(BrokerError::AlreadySubscribed(_))
                    | Some(BrokerError::EndedBeforeStart(_)) => ReasonCode::granted(qos),
                    Some(BrokerError::Denied(_)) => ReasonCode::NotAuthorized,
                    Some(BrokerError::InvalidArgument(_)) => ReasonCode::TopicFilterInvalid,
                    Some(_) => ReasonCode::UnspecifiedError,
                };
                // Granted, then ended by the client's UNSUBSCRIBE before it
                // started or before this answer: nothing to record (it would
                // bring the subscription back at a resume), no group to
                // join, no retained messages.
                let ended = matches!(error, Some(BrokerError::EndedBeforeStart(_)))
                    || (!granted.is_error() && dropped);
                if granted.is_error() || ended {
                    // Refused: the session does not have it (nor its
                    // retained messages).
                    if !ended {
                        state.subscriptions.retain(|s| *s != subscription);
                        // A SUBSCRIBE again of a filter it held, refused (its
                        // roles changed): the earlier subscription, which the
                        // broker and the session's records still have, stays
                        // (unless an UNSUBSCRIBE came since).
                        let free = !state.subscriptions.iter().any(|s| s.filter == filter);
                        if let (Some(replaced), true) = (replaced, free && !dropped) {
                            push_compact(&mut state.subscriptions, *replaced);
                        }
                    }
                    if let Some(collecting) = state.collecting.get_mut(&Awaiting::SubAck(packet_id))
                    {
                        let before = collecting.retained.len();
                        collecting.retained.retain(|s| *s != subscription);
                        let dropped = before - collecting.retained.len();
                        if dropped > 0 {
                            let extras = state.extras();
                            extras.retained_subscribing =
                                extras.retained_subscribing.saturating_sub(dropped);
                        }
                    }
                } else {
                    if shared && state.share(&filter).is_none() {
                        state.join_share(&self.listener.groups, &filter, context);
                    }
                    if let Some(collecting) = state.collecting.get_mut(&Awaiting::SubAck(packet_id))
                    {
                        collecting.granted.push(subscription);
                    }
                }
                if let Some(done) = collect(
                    &mut state.collecting,
                    Awaiting::SubAck(packet_id),
                    index,
                    granted,
                ) {
                    send_suback(state, &self.listener, packet_id, done, context);
                }
            }
            Pending::Unsubscribe(packet_id, index) => {
                let code = match error {
                    None => ReasonCode::Success,
                    Some(BrokerError::NotSubscribed(_)) => ReasonCode::NoSubscriptionExisted,
                    Some(_) => ReasonCode::UnspecifiedError,
                };
                if let Some(done) = collect(
                    &mut state.collecting,
                    Awaiting::UnsubAck(packet_id),
                    index,
                    code,
                ) {
                    send_unsuback(state, packet_id, done, context);
                }
            }
            Pending::CursorWritten { topic, seq } => {
                state.cursor_written(topic, seq, error, context)
            }
            Pending::Noted => return state.noted(request_id, error, context),
            Pending::Qos2Read => {
                let Reply::History { messages, .. } = reply else {
                    return session_unreadable(state, "read", reply, context);
                };
                if let Some(restore) = state.restore.as_mut() {
                    restore.note_records = Some(messages.clone());
                }
                return self.try_resume(context);
            }
            Pending::CursorStart(topic) => {
                if let Reply::History { head_seq, .. } = reply {
                    let followed = state.subscriptions.iter().any(|s| *s.filter == *topic);
                    if followed && !state.qos.cursors.contains_key(&topic) {
                        state.qos.cursors.insert(topic.clone(), *head_seq);
                        state.write_cursor(topic, *head_seq, context);
                    }
                }
            }
            Pending::NotedMessage(index) => {
                let Some(restore) = state.restore.as_mut() else {
                    return Ok(());
                };
                // A message that cannot be read (gone with retention) is not
                // sent again.
                if let (Reply::History { messages, .. }, Some(sent)) =
                    (reply, restore.restored_note.sent.get(index))
                {
                    restore.noted_messages[index] = if sent.seq == 0 {
                        // The topic's retained copy, unless it was cleared.
                        store::newest_retained(messages).map(|message| Message {
                            seq: 0,
                            ..message.clone()
                        })
                    } else {
                        let message = messages.iter().find(|message| message.seq == sent.seq);
                        message.cloned()
                    };
                }
                restore.noted_reads -= 1;
                if restore.noted_reads == 0 {
                    state.qos2_read = true;
                    return self.try_resume(context);
                }
            }
            Pending::OlderSessionRead => {
                let Reply::History { messages, .. } = reply else {
                    return session_unreadable(state, "read", reply, context);
                };
                if !connect::session_ended(messages.last()) {
                    let end = serde_json::json!({"type": "end"});
                    state.append_record(end, Pending::OlderSessionEnded, context);
                }
                return self.finish_clean_start(context);
            }
            Pending::OlderNoteRead => {
                let Reply::History { messages, .. } = reply else {
                    return session_unreadable(state, "read", reply, context);
                };
                let numbers = &self.listener.note_numbers;
                if !numbers.newest(messages, None).is_empty() {
                    state.note_qos2(numbers, Pending::OlderSessionEnded, context);
                }
                return self.finish_clean_start(context);
            }
            Pending::OlderSessionEnded => {
                if error.is_some() {
                    return session_unreadable(state, "ended", reply, context);
                }
                return self.finish_clean_start(context);
            }
            Pending::SessionRead => {
                let Reply::History { messages, .. } = reply else {
                    return session_unreadable(state, "read", reply, context);
                };
                let Some(restore) = state.restore.as_mut() else {
                    return Ok(());
                };
                restore.session_pages.push(messages.to_vec());
                let snapshot = &mut restore.session_snapshot;
                if let Some(before) = store::older_session_records(messages, snapshot) {
                    state.read_session(HistoryQuery::Before(before), context);
                    return Ok(());
                }
                // Pages came newest first.
                let pages = std::mem::take(&mut restore.session_pages);
                restore.session_records = pages.into_iter().rev().flatten().collect();
                state.session_read = true;
                if !state.claimed {
                    return self.claim(context);
                }
                return self.try_resume(context);
            }
            Pending::RestoreCursor { topic, floor } => {
                // The highest of the last records: a cursor never moves
                // back, but a write of a closed connection can land after
                // a newer one (`CURSOR_RECORDS_READ`).
                let stored = match reply {
                    Reply::History { messages, .. } => messages
                        .iter()
                        .filter(|record| record.kind == kind::CURSOR)
                        .map(|record| record.relation)
                        .fold(floor, u64::max),
                    _ => floor,
                };
                // A message resent from the previous connection may have
                // been acknowledged (and the cursor moved) meanwhile.
                let topic_key: Arc<str> = Arc::from(topic.as_str());
                let seq = stored.max(state.qos.cursors.get(&topic_key).copied().unwrap_or(0));
                state.qos.cursors.insert(topic_key, seq);
                let request_id = next_request(state, Pending::CaughtUp(topic.clone()));
                context.submit(
                    request_id,
                    Command::Subscribe {
                        channel: topic,
                        start: starling_protocol::SubscribeStart::FromSeq(seq + 1),
                    },
                );
            }
            Pending::Retained(topic) => {
                if let Some(error) = error {
                    log::warn!(
                        "mqtt {}: retained message of {topic:?} not kept: {error}",
                        context.peer()
                    );
                }
                let _ = index_first(state, reply, RETAINED_INDEX, topic, context);
            }
            Pending::TopicIndex => state.on_topic_index(reply, context),
            // Taken apart above (never nested).
            Pending::ThenRetain(_) => {}
            Pending::SubAckAfter(answer) => {
                if let Some(error) = error {
                    log::warn!(
                        "mqtt {} (client {:?}): the session's subscriptions were not recorded: {error}",
                        context.peer(),
                        state.client_id
                    );
                }
                let store::SubAckAfter {
                    packet_id,
                    codes,
                    retained,
                } = *answer;
                store::answer_suback(state, &self.listener, packet_id, codes, retained, context);
            }
            Pending::Following(topic) => {
                if let Some(error) = error {
                    log::warn!(
                        "mqtt {}: that the session follows {topic:?} was not recorded: {error}",
                        context.peer()
                    );
                }
                state.following(topic, context);
            }
            Pending::FellBehind(topic) => {
                if let Some(extras) = state.extras.as_mut() {
                    extras.catching_up.remove(&topic);
                }
                // Ended by the session itself (no filter needs the topic
                // any more): nothing was missed.
                if let Some(error) = error.filter(|e| !ended_by_the_session(e)) {
                    return Err(cannot_read_on(state.peer(), &topic, error, context));
                }
            }
            Pending::CaughtUp(topic) => {
                if let Some(error) = error.filter(|e| !ended_by_the_session(e)) {
                    log::warn!(
                        "mqtt {}: {topic:?} was not subscribed to catch up: {error}",
                        context.peer()
                    );
                }
                if let Some(extras) = state.extras.as_mut() {
                    extras.catching_up.remove(&topic);
                }
            }
            Pending::JoinShare(filter) => {
                let joined = matches!(error, None | Some(BrokerError::AlreadySubscribed(_)));
                if joined && state.share(&filter).is_none() {
                    state.join_share(&self.listener.groups, &filter, context);
                }
            }
            Pending::OfflineStart {
                topic,
                since_ms,
                found,
            } => state.on_offline_start(topic, since_ms, found, reply, context),
            Pending::RetainedIndex { paging, mut read } => {
                let extras = state.extras();
                extras.retained_index_reads = extras.retained_index_reads.saturating_sub(1);
                let mut next_page = None;
                // Not for a filter the client unsubscribed meanwhile.
                let goes_on = state.paging_goes_on(&paging);
                if let (
                    true,
                    Reply::History {
                        head_seq, messages, ..
                    },
                ) = (goes_on, reply)
                {
                    let (qos, subscription_id) = (paging.qos, paging.subscription_id);
                    let mut topics: Vec<String> = messages
                        .iter()
                        .filter_map(|m| std::str::from_utf8(&m.body).ok())
                        .filter(|topic| pattern::matches(&paging.filter, topic))
                        .filter(|topic| read.binary_search_by(|r| r.as_str().cmp(topic)).is_err())
                        .filter(|topic| !state.retained_superseded(topic))
                        .map(str::to_string)
                        .collect();
                    topics.sort();
                    topics.dedup();
                    for topic in &topics {
                        read_retained(state, topic.clone(), qos, subscription_id, context);
                    }
                    if let Some(last) = messages.last() {
                        if last.seq < *head_seq {
                            read.extend(topics);
                            read.sort();
                            next_page = Some((last.seq + 1, read));
                        }
                    }
                }
                match next_page {
                    Some(next) => state.next_retained_page(paging, next, context),
                    None => state.retained_paging_done(&paging),
                }
                state.resume_retained(context);
                state.drop_extras_if_unused();
            }
            Pending::RetainedRead {
                topic,
                qos,
                subscription_id,
            } => {
                let superseded = state.retained_superseded(&topic);
                let extras = state.extras();
                extras.retained_reading = extras.retained_reading.saturating_sub(1);
                extras.forget_superseded_when_idle();
                // Not when the client got a newer message of the topic live;
                // nor after an UNSUBSCRIBE of every filter matching it.
                let matched = state.subscriptions.iter().any(|subscription| {
                    !subscription.is_shared() && pattern::matches(&subscription.filter, &topic)
                });
                let retained = match reply {
                    Reply::History { messages, .. } if matched && !superseded => {
                        store::newest_retained(messages)
                    }
                    _ => None,
                };
                if let Some(message) = retained {
                    // Its seq is the `$retained` channel's, not the topic's:
                    // it moves no cursor of the topic.
                    let outgoing = Outgoing {
                        topic: Arc::from(topic),
                        message: Message {
                            seq: 0,
                            ..message.clone()
                        },
                        qos,
                        retain: true,
                        subscription_ids: subscription_id.into_iter().collect(),
                        share: None,
                    };
                    if !state.send_or_hold(outgoing, context.out()) {
                        return Err(too_much_held(state.peer(), context));
                    }
                }
                // The room the read kept may let a waiting page be read.
                state.resume_retained(context);
                // An exact subscription's read may have been all it was for.
                state.drop_extras_if_unused();
            }
        }
        Ok(())
    }
}

/// Whether `error` answers a topic subscription of the session that the
/// session's own unsubscribe ended before it started.
fn ended_by_the_session(error: &BrokerError) -> bool {
    matches!(error, BrokerError::EndedBeforeStart(_))
}

/// Refuses the CONNACK of a session whose records (or QoS 2 note) could
/// not be read, or, at a clean start, whose older session could not be
/// ended; once, though several requests may fail.
fn session_unreadable(
    state: &mut Connected,
    what: &str,
    reply: &Reply,
    context: &mut SessionContext<'_>,
) -> Result<(), Close> {
    if state.restore.take().is_none() {
        return Ok(());
    }
    let reason = format!("the session could not be {what}: {reply:?}; connect again");
    let code = ReasonCode::ServerUnavailable;
    connect::refuse_connect(state.peer(), code, &reason, context.out())
}

/// Stores `copy` as its topic's retained message (as the server: the
/// `$retained/…` channels are reserved); the reply indexes the topic.
fn store_retained(
    state: &mut Connected,
    copy: RetainedCopy,
    seq: u64,
    context: &mut SessionContext<'_>,
) {
    let request_id = next_request(state, Pending::Retained(copy.topic.clone()));
    context.submit_as_server(
        request_id,
        retained_command(&copy.topic, copy.headers, copy.payload, seq),
    );
}

/// After the first message of `topic` was stored, lists the topic in
/// `index` (the client message id keeps a retried append from listing it
/// twice); returns the request id of that append.
fn index_first(
    state: &mut Connected,
    reply: &Reply,
    index: &str,
    topic: String,
    context: &mut SessionContext<'_>,
) -> Option<u32> {
    let Reply::Published { seq: 1, .. } = reply else {
        return None;
    };
    let request_id = next_request(state, Pending::Fire);
    context.submit_as_server(
        request_id,
        Command::Publish {
            channel: index.into(),
            ephemeral: false,
            kind: kind::MESSAGE,
            client_message_id: Bytes::from(topic.clone()),
            relation: 0,
            headers: Bytes::new(),
            body: Bytes::from(topic),
        },
    );
    Some(request_id)
}

impl MqttSession {
    /// Answers a stored QoS 1 or 2 publish with PUBACK or PUBREC, in its
    /// place among the connection's acknowledgements (`arrival`). The
    /// answer to a topic's first message waits until the topic is in the
    /// topic index, so a session that reconnects after the acknowledgement
    /// finds it.
    fn acknowledge(
        &mut self,
        packet_id: u16,
        qos: QoS,
        topic: String,
        arrival: u64,
        reply: &Reply,
        context: &mut SessionContext<'_>,
    ) -> Result<(), Close> {
        let state = self.state.as_mut().expect("connected");
        let version = state.version;
        let error = match reply {
            Reply::Error(error) => Some(error),
            _ => None,
        };
        let reason = match error {
            None => {
                if qos == QoS::ExactlyOnce {
                    if let Some(received) = state.qos.qos2_received.get_mut(&packet_id) {
                        received.stored = true;
                    }
                }
                ReasonCode::Success
            }
            Some(error) => {
                if qos == QoS::ExactlyOnce {
                    let refused = state.qos.qos2_received.remove(&packet_id);
                    release_if_empty(&mut state.qos.qos2_received);
                    if refused.is_some_and(|received| received.key.is_some()) {
                        // The exchange ends here: the id is new again.
                        state.note_qos2(&self.listener.note_numbers, Pending::Fire, context);
                    }
                }
                if version == ProtocolVersion::V311 {
                    // v3.1.1 has no way to refuse a publish but to close the
                    // connection.
                    return Err(close(format!("publish refused: {error}")));
                }
                publish_reason(error)
            }
        };
        let response = PublishResponse {
            packet_id,
            reason_code: reason,
            properties: error
                .map(|error| refusal_properties(state, &error.to_string()))
                .unwrap_or_default(),
        };
        let packet = if qos == QoS::ExactlyOnce {
            Packet::PubRec(response)
        } else {
            Packet::PubAck(response)
        };
        match index_first(state, reply, TOPIC_INDEX, topic, context) {
            Some(request_id) => {
                state
                    .pending
                    .insert(request_id, Pending::AckAfter(arrival, Box::new(packet)));
            }
            None => state
                .qos
                .acks
                .answer(arrival, packet, version, context.out()),
        }
        Ok(())
    }
}

#!/usr/bin/env python3
"""IAM on a moto server for Outpost's tests: users, access keys, and moto's request authentication.

  moto_iam.py ENDPOINT admin            -> creates user "admin" (allowed everything); prints its key as JSON
  moto_iam.py ENDPOINT user NAME        -> creates user NAME allowed sqs:* only; prints {"AccessKeyId", ...}
  moto_iam.py ENDPOINT key NAME         -> a new access key for NAME (JSON)
  moto_iam.py ENDPOINT delete NAME ID   -> deletes access key ID of NAME
  moto_iam.py ENDPOINT enforce          -> from now on moto refuses requests whose credentials it does not know
  moto_iam.py ENDPOINT count QUEUE_URL  -> {"visible": N, "in_flight": M}
  moto_iam.py ENDPOINT try KEY SECRET QUEUE_URL -> {"error": null} or {"error": "<code>"} for a call with that key
Calls after `enforce` sign with the admin key from $ADMIN_KEY_ID / $ADMIN_SECRET.
"""
import json
import os
import sys
import urllib.request

import boto3


def client(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=os.environ.get("ADMIN_KEY_ID", "testing"),
                        aws_secret_access_key=os.environ.get("ADMIN_SECRET", "testing"))


def policy(actions):
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]})


def new_key(iam, name):
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def main():
    endpoint, command, *rest = sys.argv[1:]
    iam = client("iam", endpoint)
    if command in ("admin", "user"):
        name = "admin" if command == "admin" else rest[0]
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="access", PolicyDocument=policy("*" if command == "admin" else "sqs:*"))
        print(json.dumps(new_key(iam, name)))
    elif command == "key":
        print(json.dumps(new_key(iam, rest[0])))
    elif command == "delete":
        iam.delete_access_key(UserName=rest[0], AccessKeyId=rest[1])
        print("{}")
    elif command == "enforce":
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                                       headers={"Content-Type": "text/plain"}))
        print("{}")
    elif command == "count":
        attributes = client("sqs", endpoint).get_queue_attributes(
            QueueUrl=rest[0], AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        a = attributes["Attributes"]
        print(json.dumps({"visible": int(a["ApproximateNumberOfMessages"]),
                          "in_flight": int(a["ApproximateNumberOfMessagesNotVisible"])}))
    elif command == "try":
        key, secret, queue = rest
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                           aws_secret_access_key=secret)
        try:
            sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
            print(json.dumps({"error": None}))
        except Exception as e:  # noqa: BLE001 - the refusal is the answer
            print(json.dumps({"error": getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)}))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()

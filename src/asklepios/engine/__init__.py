"""The running controller: watches, timer wheel, actions, resync, leader election, balancer."""
